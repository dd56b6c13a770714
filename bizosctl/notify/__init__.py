"""Telling tenants' systems what happened: webhook endpoints, their secrets, signatures."""

from __future__ import annotations
