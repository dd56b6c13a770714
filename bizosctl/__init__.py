"""bizosctl: the operator control plane of the Enterprise Business OS."""

from __future__ import annotations

__version__ = "0.1.0"
