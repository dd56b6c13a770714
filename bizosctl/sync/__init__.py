"""Schema sync: roll the tenant migration history out to every target, in parallel, safely."""

from __future__ import annotations
