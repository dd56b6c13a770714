"""Engines, the embedded PostgreSQL servers and the translation of driver errors."""

from __future__ import annotations
