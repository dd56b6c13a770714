"""HTTP hygiene, as plain ASGI (no per-request task or thread): a request id on every
request and response, security headers, a body size limit and JSON-only request bodies.

The request id is the caller's ``X-Request-ID`` when it is a short token, a new one
otherwise; problem bodies and log lines carry it.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_REQUEST_ID = re.compile(rb"[A-Za-z0-9._-]{8,64}")
_WITH_BODY = {"POST", "PUT", "PATCH"}
#: Pages that render HTML (the OpenAPI viewer) get a CSP that allows only themselves and the
#: viewer's assets; every JSON answer gets ``default-src 'none'``.
_JSON_CSP = b"default-src 'none'; frame-ancestors 'none'"


class Hygiene:
    def __init__(self, app: ASGIApp, *, max_body: int, hsts: bool) -> None:
        self.app = app
        self.max_body = max_body
        self.hsts = hsts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"")
        rid = given.decode() if _REQUEST_ID.fullmatch(given) else secrets.token_hex(8)
        scope.setdefault("state", {})["request_id"] = rid
        method = scope["method"]
        if method in _WITH_BODY:
            length = headers.get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_body):
                await _refuse(
                    send,
                    rid,
                    413,
                    "payload-too-large",
                    f"the request body is larger than {self.max_body} bytes",
                )
                return
            ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            if (
                (length not in (None, b"0"))
                and ctype != b"application/json"
                and not (scope["path"].startswith("/api/v1/auth/oauth"))
            ):
                await _refuse(
                    send,
                    rid,
                    415,
                    "unsupported-media-type",
                    "request bodies are JSON: Content-Type: application/json",
                )
                return
            receive = _limited(receive, self.max_body)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [
                    (b"x-request-id", rid.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"cache-control", b"no-store"),
                ]
                have = {k.lower() for k, _ in message.get("headers", [])}
                if b"content-security-policy" not in have and not scope["path"].startswith("/docs"):
                    extra.append((b"content-security-policy", _JSON_CSP))
                if self.hsts:
                    extra.append((b"strict-transport-security", b"max-age=63072000"))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except _TooLarge:
            await _refuse(
                send,
                rid,
                413,
                "payload-too-large",
                f"the request body is larger than {self.max_body} bytes",
            )


class _TooLarge(Exception):
    pass


def _limited(receive: Receive, limit: int) -> Receive:
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLarge
        return message

    return wrapped


async def _refuse(send: Send, rid: str, status: int, code: str, detail: str) -> None:
    from http import HTTPStatus

    body = json.dumps(
        {
            "type": f"https://bizos.dev/problems/{code}",
            "title": HTTPStatus(status).phrase,
            "status": status,
            "detail": detail,
            "request_id": rid,
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", rid.encode()),
                (b"x-content-type-options", b"nosniff"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
