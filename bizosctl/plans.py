"""Plans: what a state-changing verb would do, computed without changing anything.

Every mutating core verb has a ``plan_...()`` sibling (or, for a verb whose plan is its own
report, a ``dry_run`` argument) that validates exactly what the verb validates, refuses what it
refuses, and returns one of these models: the document ``--dry-run`` prints and what an API
route answers for a dry run. Its JSON always carries ``"dry_run": true``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class Plan(BaseModel):
    """A dry run's answer (subclass it with the verb's fields)."""

    model_config = ConfigDict(populate_by_name=True, frozen=True)

    dry_run: Literal[True] = True

    def doc(self) -> dict[str, Any]:
        """The JSON document (field aliases such as ``from`` applied)."""
        return self.model_dump(mode="json", by_alias=True)


class PlannedStep(BaseModel):
    """One step of a plan and the statements it would run, in order."""

    step: str
    sql: list[str]


class KeyPlan(Plan):
    """The key a rotation would switch to: the staged version (None: a new key is made) and
    how long it would wait first, so that every process can already read it."""

    purpose: str
    next_version: int | None
    would_wait_s: float

    def describe(self) -> str:
        target = f"v{self.next_version} (staged)" if self.next_version else "a new key"
        return f"{target} after {self.would_wait_s}s"
