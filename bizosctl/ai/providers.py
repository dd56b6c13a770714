"""Model providers behind the gate: Gemini, any OpenAI-compatible endpoint, and offline.

A provider turns one :class:`Prompt` (already masked) into one :class:`Completion` or raises
:class:`~bizosctl.errors.ProviderFailed` saying why (``reason``) and whether another attempt
may help (``retryable``, ``retry_after`` from a 429's ``Retry-After``). Providers never retry
on their own (the client libraries' retries are off): the gate owns retries, the deadline and
the breaker, the same way for every provider.
"""

from __future__ import annotations

import email.utils
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from bizosctl.errors import ConfigError, ProviderFailed

if TYPE_CHECKING:
    import httpx

    from bizosctl.config import Settings


@dataclass(frozen=True)
class Prompt:
    """What leaves for a model: masked text, the feature's instructions, the output shape."""

    text: str
    system: str | None = None
    #: JSON schema of the structured answer (``model_json_schema()`` of a pydantic model)
    schema: dict[str, Any] | None = None
    schema_name: str = "answer"
    max_output_tokens: int = 1024
    temperature: float = 0.2


@dataclass(frozen=True)
class Completion:
    text: str
    tokens_in: int = 0
    tokens_out: int = 0


class Provider(Protocol):
    name: str
    model: str

    def complete(self, prompt: Prompt, *, timeout: float) -> Completion: ...


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def failure_for_status(status: int, headers: Any, what: str) -> ProviderFailed:
    if status == 429:
        after = retry_after_seconds(headers.get("retry-after"))
        return ProviderFailed(f"{what}: rate limited (429)", reason="rate-limited",
                              retry_after=after)  # fmt: skip
    if status >= 500:
        return ProviderFailed(f"{what}: server error ({status})", reason="server-error")
    return ProviderFailed(f"{what}: request refused ({status})", reason="rejected", retryable=False)


def transport_errors() -> tuple[type[Exception], ...]:
    """httpx's errors, and those of httpx2, the fork google-genai uses when it is installed."""
    import httpx

    try:
        import httpx2  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return (httpx.HTTPError,)
    return (httpx.HTTPError, httpx2.HTTPError)


def failure_for_transport(exc: Exception, what: str) -> ProviderFailed:
    if "Timeout" in type(exc).__name__:
        return ProviderFailed(f"{what}: no answer in time", reason="timeout")
    return ProviderFailed(f"{what}: unreachable ({type(exc).__name__})", reason="connect")


class GeminiProvider:
    """Gemini through google-genai (``models/{model}:generateContent``)."""

    name = "gemini"

    def __init__(
        self, *, api_key: str, model: str, base_url: str | None = None, timeout: float = 10.0
    ) -> None:
        from google import genai
        from google.genai import types

        self.timeout = timeout
        options = types.HttpOptions(
            api_version="v1beta", base_url=base_url, timeout=max(1, int(timeout * 1000))
        )
        self.model = model
        self._types = types
        self._configs: dict[tuple[Any, ...], Any] = {}
        self._client = genai.Client(api_key=api_key, http_options=options)

    def complete(self, prompt: Prompt, *, timeout: float) -> Completion:
        from google.genai import errors

        config = self._config(prompt, timeout)
        what = f"gemini {self.model}"
        try:
            r = self._client.models.generate_content(
                model=self.model, contents=prompt.text, config=config
            )
        except errors.APIError as exc:
            headers = exc.response.headers if exc.response is not None else {}
            raise failure_for_status(exc.code, headers, what) from exc
        except transport_errors() as exc:
            raise failure_for_transport(exc, what) from exc
        except (ValueError, KeyError, TypeError) as exc:  # a body that is not the API's JSON
            raise ProviderFailed(f"{what}: malformed response", reason="malformed") from exc
        text = r.text
        if text is None:
            raise ProviderFailed(f"{what}: an answer without text", reason="malformed")
        usage = r.usage_metadata
        tokens_in = (usage.prompt_token_count or 0) if usage else 0
        # Thinking tokens are billed as output.
        tokens_out = ((usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0)
                      if usage else 0)  # fmt: skip
        return Completion(text=text, tokens_in=tokens_in, tokens_out=tokens_out)

    def _config(self, prompt: Prompt, timeout: float) -> Any:
        """The request's config, built once per shape (building one validates ~100 fields)."""
        short = timeout < self.timeout
        key = (
            prompt.system,
            prompt.max_output_tokens,
            prompt.temperature,
            json.dumps(prompt.schema, sort_keys=True) if prompt.schema else None,
            timeout if short else None,
        )
        config = self._configs.get(key)
        if config is not None:
            return config
        types = self._types
        config = types.GenerateContentConfig(
            system_instruction=prompt.system,
            max_output_tokens=prompt.max_output_tokens,
            temperature=prompt.temperature,
            response_mime_type="application/json" if prompt.schema else None,
            response_json_schema=prompt.schema,
            # Per-request options cost the client ~1 ms (a client copy): only when the
            # deadline leaves less than the usual timeout.
            http_options=types.HttpOptions(timeout=max(1, int(timeout * 1000))) if short else None,
        )
        if len(self._configs) >= 64:
            self._configs.clear()
        self._configs[key] = config
        return config

    def close(self) -> None:
        self._client.close()


class OpenAIProvider:
    """Any OpenAI-compatible endpoint: ``POST {base_url}/chat/completions`` over httpx."""

    name = "openai"

    def __init__(self, *, api_key: str, model: str, base_url: str) -> None:
        import httpx

        self.model = model
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._client: httpx.Client = httpx.Client(
            headers={"authorization": f"Bearer {api_key}"}, follow_redirects=False
        )

    def complete(self, prompt: Prompt, *, timeout: float) -> Completion:
        import httpx

        messages = [{"role": "user", "content": prompt.text}]
        if prompt.system:
            messages.insert(0, {"role": "system", "content": prompt.system})
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": prompt.max_output_tokens,
            "temperature": prompt.temperature,
        }
        if prompt.schema:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": prompt.schema_name, "schema": prompt.schema},
            }
        what = f"openai {self.model}"
        try:
            r = self._client.post(self._url, json=body, timeout=timeout)
        except httpx.HTTPError as exc:
            raise failure_for_transport(exc, what) from exc
        if r.status_code != 200:
            raise failure_for_status(r.status_code, r.headers, what)
        try:
            data = r.json()
            text = data["choices"][0]["message"]["content"]
            usage = data.get("usage") or {}
            tokens_in = int(usage.get("prompt_tokens") or 0)
            tokens_out = int(usage.get("completion_tokens") or 0)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise ProviderFailed(f"{what}: malformed response", reason="malformed") from exc
        if not isinstance(text, str):
            raise ProviderFailed(f"{what}: an answer without text", reason="malformed")
        return Completion(text=text, tokens_in=tokens_in, tokens_out=tokens_out)

    def close(self) -> None:
        self._client.close()


#: A feature's offline rule: the masked prompt in, the answer out (text, or the structured
#: answer as a dict / pydantic model). Deterministic, local, free.
OfflineRule = Callable[[str], Any]

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def extract(text: str, *, sentences: int = 3, limit: int = 600) -> str:
    """The offline provider's default answer: the first sentences of the prompt, verbatim."""
    parts = [p.strip() for p in _SENTENCE.split(text.strip()) if p.strip()]
    return " ".join(parts[:sentences])[:limit]


class OfflineProvider:
    """Deterministic and rule-based: the feature's rule, or the first sentences of the text;
    a structured answer without a rule is the schema's defaults."""

    name = "offline"
    model = "offline"

    def answer(self, prompt: Prompt, rule: OfflineRule | None) -> str:
        if rule is not None:
            result = rule(prompt.text)
            if isinstance(result, str):
                return result
            dump = getattr(result, "model_dump_json", None)
            return dump() if dump is not None else json.dumps(result, default=str)
        if prompt.schema is not None:
            return "{}"
        return extract(prompt.text)

    def complete(self, prompt: Prompt, *, timeout: float) -> Completion:
        return Completion(text=self.answer(prompt, None))


def configured(settings: Settings) -> Provider | None:
    """The provider the settings choose, or None for offline (no key set)."""
    choice = settings.ai_provider
    gemini_key = settings.gemini_api_key.get_secret_value() if settings.gemini_api_key else ""
    openai_key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else ""
    if choice == "auto":
        choice = "gemini" if gemini_key else "openai" if openai_key else "offline"
    if choice == "gemini":
        if not gemini_key:
            raise ConfigError("ai_provider is gemini but BIZOS_GEMINI_API_KEY is not set")
        return GeminiProvider(
            api_key=gemini_key,
            model=settings.gemini_model,
            base_url=settings.gemini_base_url,
            timeout=settings.ai_timeout,
        )
    if choice == "openai":
        if not openai_key:
            raise ConfigError("ai_provider is openai but BIZOS_OPENAI_API_KEY is not set")
        return OpenAIProvider(
            api_key=openai_key, model=settings.openai_model, base_url=settings.openai_base_url
        )
    return None


def close(provider: Provider | None) -> None:
    """Close the provider's connections (providers without any have no ``close``)."""
    closer = getattr(provider, "close", None)
    if closer is not None:
        closer()
