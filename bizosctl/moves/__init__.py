"""Tenant moves between tiers, servers and regions: online, verified, resumable."""

from __future__ import annotations
