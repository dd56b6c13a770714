"""Settings: ``BIZOS_*`` environment variables, then a TOML config file, then defaults.

The config file is ``$BIZOS_CONFIG`` or ``$BIZOS_HOME/config.toml``. Read settings through
:func:`get_settings` (cached), never at import time, so tests and CLI flags can build their own.
"""

from __future__ import annotations

import os
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

REGION_PATTERN = r"^[a-z][a-z0-9-]{1,29}$"


def _default_home() -> Path:
    return Path(os.environ.get("BIZOS_HOME") or Path.home() / ".bizos").expanduser()


def config_file_path() -> Path:
    explicit = os.environ.get("BIZOS_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    return _default_home() / "config.toml"


class _TomlSource(PydanticBaseSettingsSource):
    """Reads the config file lazily so that ``BIZOS_HOME`` decides where it is."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = config_file_path()
        if not path.is_file():
            return {}
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            from bizosctl.errors import ConfigError

            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        return data


class Settings(BaseSettings):
    """Everything an operator can configure. Each field is also ``BIZOS_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="BIZOS_", extra="ignore")

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
    cors_origins: list[str] = Field(default_factory=lambda: ["*"])
    rate_limit: str | None = Field(default=None, description="e.g. 100/minute per API key")
    embedded_durable: bool = Field(
        default=True,
        description="fsync on the embedded clusters; tests and throw-away setups may turn it off.",
    )

    @field_validator("key_destroy_after", mode="before")
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
