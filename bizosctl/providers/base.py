"""One interface for where a cloud database comes from: a provider makes a project per
isolated tenant in a provider region, says when it is ready and how to reach it, finds one
again by its name (a lost reply), lists the projects bizosctl made and deletes them.

Every project bizosctl makes is named ``bizos-<slug>-<operation id>``: the operation that asked
for it finds it again after a crash between the request and the reply, and
``provider orphans`` tells bizosctl's projects from anyone else's.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from bizosctl.errors import InvalidInput

if TYPE_CHECKING:
    from bizosctl.config import Settings

PREFIX = "bizos-"


def project_name(slug: str, op_id: uuid.UUID) -> str:
    """What the project of ``slug`` made by operation ``op_id`` is called (≤ 63 characters)."""
    return f"{PREFIX}{slug[:24]}-{op_id.hex}"


def operation_of(name: str) -> str | None:
    """The operation id (hex) in a project's name, None for a project bizosctl did not make."""
    if not name.startswith(PREFIX):
        return None
    tail = name.rsplit("-", 1)[-1]
    return tail if len(tail) == 32 and all(c in "0123456789abcdef" for c in tail) else None


@dataclass
class CloudProject:
    """A project at a provider; the connection fields are set once it is ready."""

    id: str
    name: str
    region: str | None = None
    host: str | None = None
    port: int = 5432
    user: str | None = None
    password: str | None = None
    database: str | None = None
    #: provider work still to wait for (Neon: operation ids)
    pending: list[str] = field(default_factory=list)


Progress = Callable[[str], None]


class CloudProvider(Protocol):
    name: str
    token_var: str

    @property
    def calls(self) -> int:
        """API calls made so far (the benchmark reports them)."""

    def check(self) -> None:
        """Raise ProviderAuth unless the token works."""

    def regions(self) -> list[str]:
        """The provider regions projects can be made in."""

    def create(
        self, *, name: str, region: str, database: str, owner: str, password: str
    ) -> CloudProject:
        """Ask for a project (``password`` is the owner's where the provider takes one)."""

    def find(self, name: str) -> CloudProject | None:
        """The project called ``name``, or None."""

    def wait_ready(
        self, project: CloudProject, *, database: str, owner: str, password: str,
        deadline: float, progress: Progress,
    ) -> CloudProject:  # fmt: skip
        """Poll until the project takes connections; its connection fields filled in.
        ProviderError once ``deadline`` (time.monotonic) passes."""

    def delete(self, project_id: str) -> bool:
        """Delete the project; False when it was gone already."""

    def projects(self) -> list[CloudProject]:
        """Every project of the account (or organisation) whose name bizosctl gave it."""

    def close(self) -> None: ...


def token_of(settings: Settings, provider: str) -> tuple[str, str]:
    """The token for ``provider`` and the variable it comes from; InvalidInput when unset."""
    var, value = {
        "neon": ("BIZOS_NEON_API_KEY", settings.neon_api_key),
        "supabase": ("BIZOS_SUPABASE_TOKEN", settings.supabase_token),
    }[provider]
    if value is None or not value.get_secret_value().strip():
        raise InvalidInput(f"{var} is not set: {provider} needs an API token")
    return value.get_secret_value().strip(), var


def make_provider(settings: Settings, provider: str, *, org: str | None = None) -> CloudProvider:
    if provider == "neon":
        from bizosctl.providers.neon import NeonProvider

        return NeonProvider(settings, org=org)
    if provider == "supabase":
        from bizosctl.providers.supabase import SupabaseProvider

        if not org:
            raise InvalidInput("supabase needs --org ORG (the organisation id or slug)")
        return SupabaseProvider(settings, org=org)
    raise InvalidInput(f"unknown provider {provider!r} (known: neon, supabase)")


def sslmode_of(settings: Settings, provider: str) -> str:
    mode: str = settings.neon_sslmode if provider == "neon" else settings.supabase_sslmode
    return mode
