"""Benchmarks of bizosctl: measurements to read, not tests (see benchmarks/README.md)."""

from __future__ import annotations
