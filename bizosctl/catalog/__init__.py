"""The control-plane catalog: regions, servers, tenants, routes, operations, keyring."""

from __future__ import annotations
