"""Where databases come from: the embedded cluster of a region, or any PostgreSQL URL."""

from __future__ import annotations
