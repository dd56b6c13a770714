"""A loopback OAuth 2.0 / OIDC provider for tests: Google's shape (discovery, authorize,
token with an RS256 id_token, userinfo, JWKS) and GitHub's (authorize, access_token, /user,
/user/emails), in one small HTTP server on 127.0.0.1.

It is strict where real providers are: a code is used once, for the redirect URI and client it
was issued to, and only with the PKCE verifier of its S256 challenge (a code issued without a
challenge is refused too). ``account`` is whoever "logs in" at the next authorize.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from joserfc import jwt
from joserfc.jwk import RSAKey


@dataclass
class Account:
    subject: str
    email: str
    verified: bool = True
    #: Google: put the e-mail in the id_token (else only userinfo has it)
    email_in_id_token: bool = True


@dataclass
class Issued:
    account: Account
    client_id: str
    redirect_uri: str
    challenge: str | None
    method: str | None
    nonce: str | None


@dataclass
class FakeOAuth:
    client_id: str = "fake-client"
    client_secret: str = "fake-client-secret"
    account: Account = field(default_factory=lambda: Account("1", "nobody@example.com"))
    authorize_requests: list[dict[str, str]] = field(default_factory=list)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    #: sign id_tokens with a key the JWKS does not list (same kid): a forgery
    forge_id_token: bool = False

    def __post_init__(self) -> None:
        self.key = RSAKey.generate_key(2048, parameters={"kid": "fake-1", "use": "sig"})
        self.other_key = RSAKey.generate_key(2048, parameters={"kid": "fake-1", "use": "sig"})
        self.codes: dict[str, Issued] = {}
        self.tokens: dict[str, Account] = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake._get(self)

            def do_POST(self) -> None:
                fake._post(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> FakeOAuth:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- what a test can do beside the browser ------------------------------------------------
    def code_for(self, redirect_uri: str, *, challenge: str | None) -> str:
        """A code as an attacker would get one for their own login (their own verifier, or
        none), to inject into someone else's callback."""
        code = secrets.token_urlsafe(16)
        self.codes[code] = Issued(
            self.account, self.client_id, redirect_uri, challenge, "S256" if challenge else None,
            None,
        )  # fmt: skip
        return code

    # -- HTTP -------------------------------------------------------------------------------
    @staticmethod
    def _send(
        h: BaseHTTPRequestHandler, status: int, body: Any, headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def _bearer(self, h: BaseHTTPRequestHandler) -> Account | None:
        auth = h.headers.get("Authorization", "")
        return (
            self.tokens.get(auth.removeprefix("Bearer ").strip())
            if auth.startswith("Bearer ")
            else None
        )

    def _get(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        q = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if parts.path == "/.well-known/openid-configuration":
            return self._send(h, 200, {
                "issuer": self.url,
                "authorization_endpoint": f"{self.url}/authorize",
                "token_endpoint": f"{self.url}/token",
                "userinfo_endpoint": f"{self.url}/userinfo",
                "jwks_uri": f"{self.url}/jwks",
                "id_token_signing_alg_values_supported": ["RS256"],
            })  # fmt: skip
        if parts.path == "/jwks":
            return self._send(h, 200, {"keys": [self.key.as_dict(private=False)]})
        if parts.path in ("/authorize", "/login/oauth/authorize"):
            self.authorize_requests.append(q)
            if q.get("client_id") != self.client_id or q.get("response_type", "code") != "code":
                return self._send(h, 400, {"error": "invalid_request"})
            code = secrets.token_urlsafe(16)
            self.codes[code] = Issued(
                self.account, q["client_id"], q["redirect_uri"], q.get("code_challenge"),
                q.get("code_challenge_method"), q.get("nonce"),
            )  # fmt: skip
            location = q["redirect_uri"] + "?" + urlencode({"code": code, "state": q["state"]})
            h.send_response(302)
            h.send_header("Location", location)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return None
        account = self._bearer(h)
        if account is None:
            return self._send(h, 401, {"message": "Bad credentials"})
        if parts.path == "/userinfo":
            return self._send(h, 200, {
                "sub": account.subject, "email": account.email,
                "email_verified": account.verified,
            })  # fmt: skip
        if parts.path == "/user":
            return self._send(h, 200, {"id": int(account.subject), "login": "octo"})
        if parts.path == "/user/emails":
            return self._send(h, 200, [
                {"email": "old@example.org", "primary": False, "verified": True},
                {"email": account.email, "primary": True, "verified": account.verified},
            ])  # fmt: skip
        return self._send(h, 404, {"error": "not found"})

    def _post(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        form = {k: v[0] for k, v in parse_qs(h.rfile.read(length).decode()).items()}
        self.token_requests.append(form)
        if urlsplit(h.path).path not in ("/token", "/login/oauth/access_token"):
            return self._send(h, 404, {"error": "not found"})
        client = (form.get("client_id"), form.get("client_secret"))
        basic = h.headers.get("Authorization", "")
        if basic.startswith("Basic "):
            cid, _, secret = base64.b64decode(basic[6:]).decode().partition(":")
            client = (cid, secret)
        if client != (self.client_id, self.client_secret):
            return self._send(h, 401, {"error": "invalid_client"})
        issued = self.codes.pop(form.get("code", ""), None)  # one use
        if issued is None or issued.redirect_uri != form.get("redirect_uri"):
            return self._send(h, 400, {"error": "invalid_grant"})
        verifier = form.get("code_verifier")
        if issued.challenge is None or issued.method != "S256" or not verifier:
            return self._send(h, 400, {"error": "invalid_grant", "error_description": "PKCE"})
        digest = hashlib.sha256(verifier.encode()).digest()
        if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != issued.challenge:
            return self._send(h, 400, {"error": "invalid_grant", "error_description": "PKCE"})
        access = secrets.token_urlsafe(24)
        self.tokens[access] = issued.account
        body: dict[str, Any] = {"access_token": access, "token_type": "Bearer", "expires_in": 3600}
        if issued.nonce is not None:  # OIDC
            now = int(time.time())
            claims: dict[str, Any] = {
                "iss": self.url, "sub": issued.account.subject, "aud": self.client_id,
                "iat": now, "exp": now + 300, "nonce": issued.nonce,
            }  # fmt: skip
            if issued.account.email_in_id_token:
                claims |= {"email": issued.account.email, "email_verified": issued.account.verified}
            key = self.other_key if self.forge_id_token else self.key
            body["id_token"] = jwt.encode({"alg": "RS256", "kid": "fake-1"}, claims, key)
        return self._send(h, 200, body)
