"""A loopback model server that answers like the Gemini API and an OpenAI-compatible one.

``POST /v1beta/models/{model}:generateContent`` answers with ``candidates`` and
``usageMetadata``; ``POST /v1/chat/completions`` with ``choices`` and ``usage``. Each request is
answered by the next step of ``script`` (then by ``default``): ``ok`` (echo the prompt, or
``reply``), ``json:<text>`` (that text as the model's answer), ``429:<seconds>``, ``500``,
``garbage`` (a 200 whose body is not JSON), ``slow`` (hold the request until ``release``).
Tokens are counted as the gate's worst case (bytes + 64 in, the requested maximum out), so a
test can predict every cost exactly. Every request body is kept in ``bodies``.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeModel:
    def __init__(self) -> None:
        self.script: deque[str] = deque()
        self.default = "ok"
        self.reply: str | None = None
        self.bodies: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        self.release = threading.Event()
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms stall

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", 0)))
                fake.handle(self, raw)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def calls(self) -> int:
        return len(self.raw)

    def reset(self, *script: str, default: str = "ok", reply: str | None = None) -> None:
        with self._lock:
            self.script = deque(script)
            self.default = default
            self.reply = reply
            self.bodies.clear()
            self.raw.clear()
        self.release.clear()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    # -- answering ------------------------------------------------------------------------
    def handle(self, h: BaseHTTPRequestHandler, raw: bytes) -> None:
        with self._lock:
            self.raw.append(raw)
            step = self.script.popleft() if self.script else self.default
        try:
            body = json.loads(raw)
        except ValueError:
            body = {}
        with self._lock:
            self.bodies.append(body)
        if step == "slow":
            self.release.wait(30)
            step = "ok"
        if step.startswith("429"):
            after = step.partition(":")[2] or "1"
            doc = b'{"error": {"code": 429, "message": "slow", "status": "RESOURCE_EXHAUSTED"}}'
            return self._send(h, 429, doc, {"Retry-After": after})
        if step == "500":
            return self._send(h, 500, b'{"error": {"code": 500, "message": "boom",'
                              b' "status": "INTERNAL"}}')  # fmt: skip
        if step == "garbage":
            return self._send(h, 200, b"<html>not json</html>")
        gemini = ":generateContent" in h.path
        prompt, max_out = _prompt(body, gemini=gemini)
        text = step.partition(":")[2] if step.startswith("json:") else (self.reply or prompt)
        system = _system(body, gemini=gemini)
        tokens_in = len(prompt.encode()) + len(system.encode()) + 64
        if gemini:
            doc = {
                "candidates": [
                    {
                        "content": {"role": "model", "parts": [{"text": text}]},
                        "finishReason": "STOP",
                        "index": 0,
                    }
                ],
                "usageMetadata": {
                    "promptTokenCount": tokens_in,
                    "candidatesTokenCount": max_out,
                    "totalTokenCount": tokens_in + max_out,
                },
            }
        else:
            doc = {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": tokens_in, "completion_tokens": max_out},
            }
        return self._send(h, 200, json.dumps(doc).encode())

    @staticmethod
    def _send(
        h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str] | None = None
    ) -> None:
        try:
            h.send_response(status)
            h.send_header("content-type", "application/json")
            h.send_header("content-length", str(len(body)))
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)


def _prompt(body: dict[str, Any], *, gemini: bool) -> tuple[str, int]:
    if gemini:
        parts = [p.get("text", "") for c in body.get("contents", []) for p in c.get("parts", [])]
        return "".join(parts), int(body.get("generationConfig", {}).get("maxOutputTokens", 0))
    user = [m["content"] for m in body.get("messages", []) if m.get("role") == "user"]
    return "".join(user), int(body.get("max_tokens", 0))


def _system(body: dict[str, Any], *, gemini: bool) -> str:
    if gemini:
        si = body.get("systemInstruction") or {}
        return "".join(p.get("text", "") for p in si.get("parts", []))
    return "".join(m["content"] for m in body.get("messages", []) if m.get("role") == "system")
