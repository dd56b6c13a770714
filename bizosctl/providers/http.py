"""The HTTP side of the cloud providers: one request with a timeout, a client-side rate limit,
retries with backoff on 5xx and timeouts, waits on 429 (``Retry-After``), and the provider's
answers mapped onto :mod:`bizosctl.errors` (a refused token is bad input naming its variable).

The token is sent in a header and never appears in a message.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

import httpx

from bizosctl.errors import InvalidInput, ProjectGone, ProviderAuth, ProviderError
from bizosctl.throttle import Throttle

if TYPE_CHECKING:
    from bizosctl.config import Settings

_LIMITS: dict[tuple[str, str], Throttle] = {}
_LIMITS_LOCK = threading.Lock()
#: Seconds a 429's Retry-After may ask for before bizosctl gives up on the call.
MAX_RETRY_AFTER = 120.0


def rate_limit(key: tuple[str, str], *, per_minute: int, burst: int) -> Throttle:
    """One limiter per provider API and process. A request costs 60 units of a Throttle of
    ``per_minute`` units a second, so it admits ``per_minute`` requests a minute with a
    burst of ``burst`` requests."""
    with _LIMITS_LOCK:
        limiter = _LIMITS.get(key)
        if limiter is None:
            limiter = _LIMITS[key] = Throttle(per_minute, burst=burst * 60 / per_minute)
        return limiter


class ProviderHTTP:
    """One provider's API: ``request`` returns the decoded JSON body (None when empty)."""

    def __init__(
        self,
        *,
        provider: str,
        base_url: str,
        token: str,
        token_var: str,
        settings: Settings,
        per_minute: int,
        burst: int,
    ) -> None:
        self.provider = provider
        self.token_var = token_var
        self.settings = settings
        self.calls = 0  # API calls made (tries included): the benchmark reports them
        self._limit = rate_limit((provider, base_url), per_minute=per_minute, burst=burst)
        self._client = httpx.Client(
            base_url=base_url,
            timeout=settings.provider_timeout,
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/json",
                "User-Agent": "bizosctl",
            },
        )

    def close(self) -> None:
        self._client.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
    ) -> Any:
        """One API call, retried on 5xx, timeouts and connection errors (backoff doubling
        from ``provider_backoff``) and on 429 (after Retry-After), ``provider_attempts`` tries
        in all. Raises ProviderAuth (401/403), ProjectGone (404), InvalidInput (other 4xx)
        and ProviderError once the tries are spent.

        A POST whose reply never came (a timeout, a dropped connection) is not sent again:
        the provider may have done it, and a second project would be paid for. It raises
        :class:`ReplyLost` and the caller looks for what the first one made."""
        settings = self.settings
        what = f"{self.provider} API {method} {path.split('?')[0]}"
        last = ""
        for attempt in range(settings.provider_attempts):
            self._limit.take(60)
            self.calls += 1
            wait = settings.provider_backoff * 2**attempt
            try:
                r = self._client.request(method, path, params=params, json=json)
            except httpx.TimeoutException:
                last = f"no answer within {settings.provider_timeout:g}s"
                if method == "POST":
                    raise ReplyLost(f"{what}: {last}") from None
            except httpx.TransportError as exc:
                last = f"cannot connect ({type(exc).__name__})"
                if method == "POST" and not isinstance(exc, httpx.ConnectError):
                    raise ReplyLost(f"{what}: {last}") from None
            else:
                if r.status_code < 400:
                    return r.json() if r.content else None
                last = f"{r.status_code} {_message(r)}"
                if r.status_code == 429:
                    wait = _retry_after(r, default=wait)
                    if wait > MAX_RETRY_AFTER:
                        raise ProviderError(f"{what}: rate limited for {wait:g}s")
                elif r.status_code in (401, 403):
                    raise ProviderAuth(
                        f"{self.provider} refused the token in {self.token_var} "
                        f"({r.status_code} {_message(r)})"
                    )
                elif r.status_code == 404:
                    raise ProjectGone(f"{what}: not found")
                elif r.status_code < 500:
                    raise InvalidInput(f"{what}: {last}")
            if attempt + 1 < settings.provider_attempts:
                time.sleep(wait)
        raise ProviderError(
            f"{what} failed {settings.provider_attempts} times (last: {last}); "
            "run the same command again to resume"
        )


class ReplyLost(ProviderError):
    """A request was sent and its reply lost: it may or may not have been done."""


def _retry_after(r: httpx.Response, *, default: float) -> float:
    value = r.headers.get("Retry-After", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return default


def _message(r: httpx.Response) -> str:
    """The provider's own one-line reason, short (never the request: it holds the token)."""
    try:
        body = r.json()
    except ValueError:
        return r.reason_phrase
    if isinstance(body, dict):
        msg = body.get("message") or body.get("error") or body.get("msg")
        if isinstance(msg, str):
            return msg[:200]
    return r.reason_phrase
