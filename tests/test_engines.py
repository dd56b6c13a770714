"""The one translation of driver errors: a connection the server ended is retryable."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from bizosctl.catalog.control import CATALOG_DB, Control
from bizosctl.db.engines import get_engine, translate_errors
from bizosctl.errors import ServerUnavailable


def test_a_connection_the_server_terminated_is_server_unavailable(fleet: Control) -> None:
    """pg_terminate_backend (SQLSTATE 57P01, what a restart does to every session) gives the
    retryable ServerUnavailable, not a failed query."""
    engine = get_engine(fleet.home_cluster.url(CATALOG_DB), pre_ping=False)
    with engine.connect() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with get_engine(fleet.home_cluster.url("postgres"), pooled=False).connect() as admin:
            admin.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        with pytest.raises(ServerUnavailable, match="terminating connection"):
            with translate_errors("catalog"):
                conn.execute(text("SELECT 1"))
    assert ServerUnavailable.retryable
