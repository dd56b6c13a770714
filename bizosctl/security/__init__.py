"""Keyring, field encryption and blind indexes."""

from __future__ import annotations
