"""The host side as an attacker sees it: cluster processes, the home's files, BYO servers."""

from __future__ import annotations

import os

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from bizosctl.config import reset_settings
from bizosctl.db.engines import get_engine

AWS_SECRET = "aws-secret-h4-Zq8Xv"
MASTER = "k" * 43  # base64 of 32 bytes


def test_cluster_holds_no_caller_secret_and_cannot_read_another_home(
    fleet, fresh_home, cli, monkeypatch
):
    """A superuser session reads its server's environment; with two homes (the session fleet
    and a fresh one) the fresh home's superuser tries to read the fleet's data files."""
    from bizosctl.catalog.control import get_control

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    monkeypatch.setenv("BIZOS_MASTER_KEY", MASTER)
    monkeypatch.setenv("BIZOS_STRIPE_SECRET_KEY", "sk_test_h4secret")
    reset_settings()
    assert cli("init").exit_code == 0
    ctl = get_control()
    with get_engine(ctl.home_cluster.url("postgres"), pooled=False).connect() as c:
        assert c.execute(text("select rolsuper from pg_roles where rolname = current_user")).scalar()
        pid = c.execute(text("select split_part(pg_read_file('postmaster.pid'), E'\\n', 1)"))
        postmaster = int(pid.scalar_one())
        for p in (postmaster, c.execute(text("select pg_backend_pid()")).scalar_one()):
            environ = c.execute(
                text("select pg_read_binary_file(:f)"), {"f": f"/proc/{p}/environ"}
            ).scalar_one()
            assert environ, "the test must really read the environment"
            for secret in (AWS_SECRET, MASTER, "sk_test_h4secret", "BIZOS_"):
                assert secret.encode() not in bytes(environ)
        if os.geteuid() != 0:
            return  # one OS user runs every home: no isolation between homes to test
        other = fleet.home_cluster.pgdata
        for sql, arg in (
            ("select pg_ls_dir(:d)", str(other)),
            ("select pg_read_file(:d)", str(other / "PG_VERSION")),
            ("select pg_read_file(:d)", str(fleet.settings.home / "master.key")),
        ):
            with pytest.raises(DBAPIError, match="[Pp]ermission denied"):
                c.execute(text(sql), {"d": arg})
            c.rollback()
