"""Settings: ``BIZOS_*`` environment variables, then a TOML config file, then defaults.

The config file is ``$BIZOS_CONFIG`` or ``$BIZOS_HOME/config.toml``. Read settings through
:func:`get_settings` (cached), never at import time, so tests and CLI flags can build their own.
"""

from __future__ import annotations

import datetime as dt
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

REGION_PATTERN = r"^[a-z][a-z0-9-]{1,29}$"
SSLMode = Literal["verify-full", "verify-ca", "require", "prefer", "disable"]


#: root's default home when it has no ~/.bizos: the embedded servers run as unprivileged OS
#: users, which cannot reach a home under /root (0700 on most systems).
ROOT_HOME = Path("/var/lib/bizosctl/home")


def _default_home() -> Path:
    if os.environ.get("BIZOS_HOME"):
        return Path(os.environ["BIZOS_HOME"]).expanduser()
    mine = Path.home() / ".bizos"
    if os.geteuid() == 0 and not mine.exists():
        return ROOT_HOME
    return mine


def config_file_path() -> Path:
    explicit = os.environ.get("BIZOS_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    return _default_home() / "config.toml"


def read_config_file() -> dict[str, Any]:
    """The config file's settings, checked: no symlink, owned by us or root, writable by
    nobody else, no unknown key, and no secret in a file that others can read.

    A missing ``$BIZOS_HOME/config.toml`` is fine; a missing ``$BIZOS_CONFIG`` is an error.
    """
    import tomllib

    from bizosctl.errors import ConfigError
    from bizosctl.home import file_mode, open_private, read_fd

    path = config_file_path()
    explicit = bool(os.environ.get("BIZOS_CONFIG"))
    try:
        fd = open_private(path, what="config file")
    except (FileNotFoundError, NotADirectoryError):
        if explicit:
            raise ConfigError(
                f"config file {path} (BIZOS_CONFIG) does not exist: create it or unset BIZOS_CONFIG"
            ) from None
        return {}
    mode = file_mode(fd)
    try:
        data = tomllib.loads(read_fd(fd).decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    unknown = sorted(set(data) - set(Settings.model_fields))
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown setting {unknown[0]!r} (see `bizosctl --help` and "
            "the README for the settings)"
        )
    secret = sorted(set(data) & secret_fields())
    if secret and mode & 0o077:
        raise ConfigError(
            f"config file {path} holds the secret {secret[0]!r} but others can read it "
            f"(mode {mode:04o}): run chmod 600 {path}, or set BIZOS_{secret[0].upper()} instead"
        )
    return data


def update_config_file(values: dict[str, str | int | float | bool]) -> Path:
    """Set ``values`` in the config file (created 0600), replacing it atomically.

    The old file is read the checked way; the new one is written to a fresh ``O_EXCL``
    temporary file beside it and renamed over it, so no symlink is ever written through.
    """
    import secrets

    path = config_file_path()
    data = read_config_file()
    data.update(values)
    lines = [f"{k} = {_toml(v)}" for k, v in data.items()]
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


class _TomlSource(PydanticBaseSettingsSource):
    """Reads the config file lazily so that ``BIZOS_HOME`` decides where it is."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return read_config_file()


class Settings(BaseSettings):
    """Everything an operator can configure. Each field is also ``BIZOS_<NAME>``."""

    # An empty variable means unset: BIZOS_HOME="" must not make the home the working directory.
    model_config = SettingsConfigDict(env_prefix="BIZOS_", extra="ignore", env_ignore_empty=True)

    home: Path = Field(
        default_factory=_default_home, description="Where regions, keys and state live."
    )
    home_region: str = Field(default="global", pattern=REGION_PATTERN)
    master_key: SecretStr | None = Field(
        default=None, description="Base64 32-byte master key; overrides the key file."
    )
    master_key_file: Path | None = Field(
        default=None, description="Default: $BIZOS_HOME/master.key"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "warning"
    output: Literal["human", "json"] = "human"
    pool_size: int = Field(
        default=5, ge=1, le=100, description="Connections per (server, database, role)."
    )
    statement_timeout_ms: int = Field(default=30_000, ge=0)
    # Set on the application login roles (ALTER ROLE ... SET): one tenant cannot hold locks
    # that stall the others for long. PostgreSQL units: ms, s, min, h (0 turns one off).
    app_lock_timeout: str = Field(default="5s", pattern=r"^[0-9]+(ms|s|min|h)?$")
    app_statement_timeout: str = Field(default="30s", pattern=r"^[0-9]+(ms|s|min|h)?$")
    app_idle_in_transaction_timeout: str = Field(default="60s", pattern=r"^[0-9]+(ms|s|min|h)?$")
    env: Literal["development", "staging", "production"] = "development"
    kms_key_id: str | None = Field(
        default=None, description="AWS KMS key (id, ARN or alias) wrapping the data keys."
    )
    kms_endpoint_url: str | None = Field(default=None, description="KMS endpoint (VPC, tests).")
    keyring_reload_seconds: float = Field(
        default=10.0, ge=0, description="How often a process re-reads the keyring (rotations)."
    )
    jwt_ttl_seconds: int = Field(default=3600, ge=60, description="Lifetime of session tokens.")
    jwt_leeway_seconds: int = Field(
        default=5, ge=0, le=300, description="Clock skew allowed when checking a token's times."
    )
    access_token_ttl_seconds: int = Field(
        default=900, ge=60, description="Lifetime of a member's access token (at most the JWT TTL)."
    )
    refresh_token_ttl_seconds: int = Field(
        default=30 * 86400, ge=300, description="How long a login session lasts without use."
    )
    key_destroy_after: float = Field(
        default=30 * 86400.0,
        ge=0,
        description="How long a retired PII or credentials key is kept before its material is "
        "destroyed (seconds, or a duration: 30d, 12h, 5s). Retired JWT keys are destroyed at once.",
    )
    stripe_secret_key: SecretStr | None = None
    stripe_publishable_key: str | None = None
    stripe_webhook_secret: SecretStr | None = None
    public_url: str | None = Field(
        default=None, description="Where the API is served, e.g. https://..."
    )
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    cors_origins: list[str] = Field(
        default_factory=lambda: ["*"],
        description="Origins allowed to call the API from a browser (production: no '*').",
    )
    rate_limit: str | None = Field(
        default="100/10seconds",
        description="Requests per API key or member (anonymous: per address), e.g. 100/10seconds.",
    )
    rate_limits: dict[str, str] = Field(
        default_factory=lambda: {"auth": "10/minute"},
        description='Per-route-group overrides as JSON, e.g. {"auth": "10/minute", '
        '"invoices": "300/minute"}.',
    )
    redis_url: str | None = Field(
        default=None,
        description="Rate-limit counters in Redis (several API workers or hosts); memory if unset.",
    )
    rate_limit_fail_open: bool = Field(
        default=True,
        description="When the rate-limit store is unreachable, serve (true) or refuse with 503 "
        "(false). Auth routes always refuse.",
    )
    api_auth_cache_seconds: float = Field(
        default=2.0,
        ge=0,
        le=60,
        description="How long an API worker keeps an API key's record (tenant, scopes, status, "
        "secret hash) after reading it; revocations, rotations and tenant status changes drop "
        "it at once (NOTIFY), this bounds it when that is missed. 0: read on every request.",
    )
    api_max_body_bytes: int = Field(
        default=1_048_576, ge=1024, description="Largest request body the API accepts."
    )
    webhook_allow_hosts: str = Field(
        default="",
        description="Comma-separated webhook hosts allowed although not public (labs, tests); "
        "outside development every other webhook target must be a public address.",
    )
    worker_concurrency: int = Field(
        default=4, ge=1, le=64, description="Jobs one `bizosctl worker` runs at once."
    )
    worker_heartbeat_interval: float = Field(
        default=10.0, gt=0, description="Seconds between a worker's heartbeats."
    )
    worker_stalled_timeout: float = Field(
        default=60.0,
        gt=0,
        description="Seconds without a heartbeat after which a worker counts as dead and its "
        "running jobs are re-queued by the other workers (more than the heartbeat interval).",
    )
    worker_retry_max_attempts: int = Field(
        default=10, ge=1, description="Runs of a job failing with a retryable error, in all."
    )
    worker_retry_backoff: float = Field(
        default=2.0,
        ge=0,
        description="Seconds before the first retry of a job; doubled each time, up to an hour.",
    )
    scheduler_digest_time: dt.time = Field(
        default=dt.time(5, 0),
        description="Local time of the daily digest in each tenant's own time zone (HH:MM).",
    )
    scheduler_grace: float = Field(
        default=6 * 3600.0,
        ge=0,
        description="How late a daily run missed while no scheduler ran is still enqueued "
        "(seconds, or a duration: 6h, 30m); older ones are skipped and reported.",
    )
    scheduler_refresh_interval: float = Field(
        default=60.0,
        gt=0,
        description="Seconds between a scheduler's re-reads of tenants and their zones, "
        "kept sources and keys (and its heartbeat).",
    )
    scheduler_reap_interval: float = Field(
        default=60.0,
        gt=0,
        description="Seconds between two stalled-job reaping jobs the scheduler enqueues.",
    )
    scheduler_keep_runs: float = Field(
        default=30 * 86400.0,
        gt=0,
        description="How long the record of an enqueued run is kept (the latest run of "
        "each entry is always kept).",
    )
    oauth_state_ttl_seconds: int = Field(
        default=600, ge=60, le=3600, description="How long an OAuth login may take, start to end."
    )
    oauth_google_client_id: str | None = Field(
        default=None, description="Google OAuth client id (unset: no Google login)."
    )
    oauth_google_client_secret: SecretStr | None = None
    oauth_google_issuer: str = Field(
        default="https://accounts.google.com",
        description="Google's OIDC issuer: its /.well-known/openid-configuration names the "
        "endpoints and keys (tests point it at a loopback server).",
    )
    oauth_github_client_id: str | None = Field(
        default=None, description="GitHub OAuth app client id (unset: no GitHub login)."
    )
    oauth_github_client_secret: SecretStr | None = None
    oauth_github_url: str = Field(
        default="https://github.com", description="GitHub's web base URL (authorize, token)."
    )
    oauth_github_api_url: str = Field(
        default="https://api.github.com", description="GitHub's API base URL (/user, /user/emails)."
    )
    # -- GDPR (bizosctl/privacy) ---------------------------------------------------------------
    gdpr_retention_years: dict[str, int] = Field(
        default_factory=lambda: {"id": 10, "de": 8},
        description='Years tax records (invoices) are kept, per region, as JSON, e.g. {"id": 10, '
        '"de": 8}; regions not named keep gdpr_retention_default_years.',
    )
    gdpr_retention_default_years: int = Field(
        default=10, ge=0, le=30, description="Retention of tax records in the other regions."
    )
    security_contact: list[str] = Field(
        default_factory=list,
        description="security.txt Contact lines (mailto: or https: URIs, JSON list); unset: "
        "/.well-known/security.txt is 404.",
    )
    security_policy_url: str | None = Field(default=None, description="security.txt Policy.")
    security_languages: list[str] = Field(
        default_factory=lambda: ["en"], description="security.txt Preferred-Languages."
    )
    security_txt_expires_days: int = Field(
        default=180, ge=1, le=365, description="security.txt Expires: this many days ahead."
    )
    # -- the LLM gate (bizosctl/ai) ------------------------------------------------------------
    ai_provider: Literal["auto", "gemini", "openai", "offline"] = Field(
        default="auto",
        description="Which model the gate calls: auto = gemini when a Gemini key is set, else "
        "openai when an OpenAI-compatible key is set, else the offline provider.",
    )
    gemini_api_key: SecretStr | None = None
    gemini_model: str = "gemini-2.5-flash"
    gemini_base_url: str | None = Field(default=None, description="Default: Google's endpoint.")
    openai_api_key: SecretStr | None = None
    openai_model: str = "gpt-4o-mini"
    openai_base_url: str = Field(
        default="https://api.openai.com/v1",
        description="Any OpenAI-compatible endpoint (its /chat/completions is called).",
    )
    ai_timeout: float = Field(default=10.0, gt=0, description="Seconds one model request may take.")
    ai_deadline: float = Field(
        default=20.0, gt=0, description="Seconds a call may spend on the model, retries included."
    )
    ai_retries: int = Field(default=2, ge=0, le=10, description="Retries on 429, 5xx, timeouts.")
    ai_backoff: float = Field(default=0.25, ge=0, description="First retry delay, then doubled.")
    ai_breaker_failures: int = Field(
        default=3, ge=1, description="Consecutive failed attempts that open a provider's breaker."
    )
    ai_breaker_cooldown: float = Field(
        default=30.0, ge=0, description="Seconds an open breaker keeps its provider out."
    )
    ai_max_output_tokens: int = Field(default=1024, ge=1, le=65536)
    ai_names_ttl: float = Field(
        default=60.0, ge=0, description="Seconds a tenant's names (masking dictionary) are kept."
    )
    ai_prices: dict[str, dict[str, float]] = Field(
        default_factory=lambda: {
            "gemini-2.5-flash": {"input": 0.30, "output": 2.50},
            "gemini-2.5-flash-lite": {"input": 0.10, "output": 0.40},
            "gemini-2.5-pro": {"input": 1.25, "output": 10.0},
            "gpt-4o-mini": {"input": 0.15, "output": 0.60},
            "offline": {"input": 0.0, "output": 0.0},
        },
        description="USD per million tokens in and out, per model (JSON in BIZOS_AI_PRICES).",
    )
    ai_plans: dict[str, dict[str, float]] = Field(
        default_factory=lambda: {
            "free": {"price": 0.0, "ai_budget": 1.0},
            "pro": {"price": 49.0, "ai_budget": 10.0},
            "enterprise": {"price": 499.0, "ai_budget": 100.0},
        },
        description="Plans: monthly price and monthly AI budget in USD (JSON in BIZOS_AI_PLANS).",
    )
    password_hash_concurrency: int = Field(
        default=0,
        ge=0,
        le=64,
        description="Password checks (bcrypt) run at once per API process; 0: half the CPUs "
        "(at least 1), so logins never take every core from the other requests.",
    )
    password_hash_wait: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="Seconds a login waits for a free password check before a 429.",
    )
    region_time_zones: dict[str, str] = Field(
        default_factory=lambda: {"id": "Asia/Jakarta"},
        description="Default IANA time zone of a region's tenants (JSON in "
        "BIZOS_REGION_TIME_ZONES); other regions default to UTC.",
    )
    # -- the digest (bizosctl/digest) and e-mail (bizosctl/notify/email.py) -------------------
    digest_parallel: int = Field(
        default=8, ge=1, le=256, description="Tenants' digests made at once by `digest run --all`."
    )
    digest_per_region: int = Field(
        default=4, ge=1, le=256, description="Of those, at most this many in one region at once."
    )
    digest_per_provider: int = Field(
        default=8,
        ge=1,
        le=256,
        description="At most this many digests waiting on one model provider at once.",
    )
    digest_queue: str = Field(default="digests", description="The job queue of `digest.run`.")
    smtp_host: str | None = Field(
        default=None, description="SMTP server for e-mail; unset: e-mail is not sent (card only)."
    )
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_security: Literal["starttls", "tls", "none"] = Field(
        default="starttls",
        description="starttls (port 587), tls (implicit TLS, port 465) or none (loopback only).",
    )
    smtp_username: str | None = Field(
        default=None,
        description="SMTP login; its password is sealed in the keyring (`email smtp-password`).",
    )
    smtp_timeout: float = Field(default=15.0, gt=0, description="Seconds for one SMTP session.")
    smtp_ca_file: Path | None = Field(
        default=None,
        description="CA certificates (PEM) the SMTP server's certificate is checked against, "
        "for a relay with a private CA; unset: the system's trust store.",
    )
    email_from: str = Field(
        default="bizos@localhost",
        description="Sender address of tenants without their own (`tenant email-sender`).",
    )
    email_queue: str = Field(default="email", description="The job queue of `email.send`.")
    embedded_durable: bool = Field(
        default=True,
        description="fsync on the embedded clusters; tests and throw-away setups may turn it off.",
    )
    # -- cloud providers (Neon, Supabase): tokens, where their APIs are, how patient to be ----
    neon_api_key: SecretStr | None = Field(default=None, description="Neon API key.")
    neon_api_url: str = Field(
        default="https://console.neon.tech/api/v2/",
        description="Neon API base URL (ends with /; tests point it at a loopback fake).",
    )
    neon_sslmode: SSLMode = Field(
        default="verify-full", description="sslmode of connections to Neon projects."
    )
    supabase_token: SecretStr | None = Field(
        default=None, description="Supabase Management API personal access token."
    )
    supabase_api_url: str = Field(
        default="https://api.supabase.com", description="Supabase Management API base URL."
    )
    supabase_sslmode: SSLMode = Field(
        default="verify-full", description="sslmode of connections to Supabase projects."
    )
    provider_timeout: float = Field(
        default=30.0, gt=0, description="Seconds one provider API request may take."
    )
    provider_attempts: int = Field(
        default=6, ge=1, description="Tries of one provider API request (5xx, timeouts, 429)."
    )
    provider_backoff: float = Field(
        default=1.0, ge=0, description="Seconds before the first retry; doubled each time."
    )
    provider_poll_interval: float = Field(
        default=2.0, gt=0, description="Seconds between two polls of a project being made."
    )
    provider_ready_timeout: float = Field(
        default=900.0, gt=0, description="Seconds a new project may take to become ready."
    )

    @field_validator("key_destroy_after", "scheduler_grace", "scheduler_keep_runs", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        if isinstance(value, str):
            from bizosctl.durations import parse_ms
            from bizosctl.errors import InvalidInput

            try:
                return parse_ms(value, what="duration") / 1000
            except InvalidInput as exc:
                raise ValueError(exc.message) from None
        return value

    @field_validator("home", "master_key_file", mode="after")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser().absolute() if value is not None else None

    @property
    def key_file(self) -> Path:
        return self.master_key_file or self.home / "master.key"

    @property
    def regions_dir(self) -> Path:
        return self.home / "regions"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _TomlSource(settings_cls)


def secret_fields() -> set[str]:
    """Settings that hold secrets (``SecretStr``): refused in a config file others can read."""
    return {n for n, f in Settings.model_fields.items() if "SecretStr" in str(f.annotation)}


def secret_source(name: str) -> str | None:
    """Where the secret setting ``name`` comes from: its variable or the config file."""
    var = f"BIZOS_{name.upper()}"
    if any(k.upper() == var and v for k, v in os.environ.items()):
        return f"environment variable {var}"
    try:
        in_file = name in read_config_file()
    except Exception:  # a bad file is reported by get_settings already
        in_file = False
    return f"config file {config_file_path()}" if in_file else None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    from pydantic import ValidationError

    from bizosctl.errors import ConfigError

    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"setting {loc!r}: {first['msg']}") from exc


def reset_settings() -> None:
    """Forget cached settings and everything derived from them (tests, --home)."""
    get_settings.cache_clear()
