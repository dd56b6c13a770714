"""The command line: thin Typer apps over the core functions."""

from __future__ import annotations
