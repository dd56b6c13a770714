"""Tiers, provisioning, the tenant router and the tenant life cycle."""

from __future__ import annotations
