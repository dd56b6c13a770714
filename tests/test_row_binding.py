"""A PII ciphertext is bound to its row: copied onto another member by a holder of the
tenant's application credential, it does not decrypt there."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from bizosctl.db.engines import get_engine
from bizosctl.errors import DecryptionFailed
from bizosctl.security.fields import decrypt
from bizosctl.tenancy.router import tenant_session
from bizosctl.tenancy.sample import load_sample_data


def email_of(ctl, slug, member_id):
    """What the application reads as the member's e-mail."""
    route = ctl.route(slug)
    with tenant_session(ctl, slug, actor="app", read_only=True) as s:
        token = s.execute(
            text("select email_enc from members where id = :i"), {"i": member_id}
        ).scalar_one()
    return decrypt(
        ctl.keyring,
        token,
        tenant_id=route.tenant_id,
        table="members",
        column="email",
        row=member_id,
    )


@pytest.mark.parametrize("tier", ["shared", "isolated"])
def test_ciphertext_copied_to_another_member_does_not_decrypt(ctl, make_tenant, tier):
    slug = make_tenant(tier=tier)
    load_sample_data(ctl, slug)
    route = ctl.route(slug)
    assert ctl.keyring.primary("pii").binds_rows
    with tenant_session(ctl, slug, actor="t", read_only=True) as s:
        a, b = s.execute(text("select id from members order by id limit 2")).scalars()
    a_email = email_of(ctl, slug, a)
    # the attacker: the tenant's own application login role, over a real connection
    url = ctl.server(route.server).login_url(route.database, route.role, route.password)
    with get_engine(url, pooled=False).connect() as conn:
        conn.execute(
            text(
                "select set_config('bizos.tenant_id', :t, true), "
                "set_config('search_path', :p, true)"
            ),
            {"t": str(route.tenant_id), "p": route.schema},
        )
        n = conn.execute(
            text(
                "update members set email_enc = (select email_enc from members where id = :a) "
                "where id = :b"
            ),
            {"a": a, "b": b},
        ).rowcount
        conn.commit()
    assert n == 1
    with pytest.raises(DecryptionFailed, match="does not decrypt") as err:
        email_of(ctl, slug, b)
    assert "row" in str(err.value)
    assert email_of(ctl, slug, a) == a_email  # the original still reads


def _copy_email(ctl, slug, src, dst):
    route = ctl.route(slug)
    url = ctl.server(route.server).login_url(route.database, route.role, route.password)
    with get_engine(url, pooled=False).connect() as conn:
        conn.execute(
            text(
                "select set_config('bizos.tenant_id', :t, true), "
                "set_config('search_path', :p, true)"
            ),
            {"t": str(route.tenant_id), "p": route.schema},
        )
        conn.execute(
            text(
                "update members set email_enc = (select email_enc from members where id = :a) "
                "where id = :b"
            ),
            {"a": src, "b": dst},
        )
        conn.commit()


def test_a_home_from_before_row_binding_binds_rows_after_the_next_rotation(initialised_home, cli):
    """Revision 0005 on a home whose values are not bound to their rows: the staged key binds,
    `secrets check` says so until `secrets rotate pii` re-encrypts every value bound to its
    row."""
    import json

    from bizosctl.catalog.control import get_control
    from bizosctl.db.migrate import migrate, upgrade

    ctl = get_control()
    with ctl.catalog_engine.begin() as conn:  # back to before 0005 and up again
        migrate(conn, "control", revision="0004", allow_downgrade=True)
    with ctl.catalog_engine.begin() as conn:
        upgrade(conn, "control")
    ctl.reload_keyring()
    ring = ctl.keyring
    assert not ring.primary("pii").binds_rows and ring.get("pii", 2).binds_rows
    r = cli("tenant", "create", "old-co", "--name", "Old", "--tier", "schema", "--region", "global")
    assert r.exit_code == 0, r.stderr
    load_sample_data(ctl, "old-co")  # written as before 0005: bound to tenant and column only
    check = json.loads(cli("secrets", "check", "--json").stdout)
    [row] = [c for c in check["checks"] if c["name"] == "PII row binding"]
    assert not row["ok"] and "secrets rotate pii" in row["detail"]
    with tenant_session(ctl, "old-co", actor="t", read_only=True) as s:
        a, b, c = s.execute(text("select id from members order by id limit 3")).scalars()
    a_email = email_of(ctl, "old-co", a)
    with tenant_session(ctl, "old-co", actor="t", read_only=True) as s:
        b_token = s.execute(text("select email_enc from members where id = :i"), {"i": b})
        b_token = b_token.scalar_one()
    _copy_email(ctl, "old-co", a, b)
    assert email_of(ctl, "old-co", b) == a_email  # what revision 0005 cannot change alone
    with tenant_session(ctl, "old-co", actor="t") as s:  # b's own value back (unique e-mails)
        s.execute(text("update members set email_enc = :e where id = :i"), {"e": b_token, "i": b})
    r = cli("secrets", "rotate", "pii", "--workers", "0", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["version"] == 2
    ctl.reload_keyring()
    assert ctl.keyring.primary("pii").binds_rows
    assert email_of(ctl, "old-co", a) == a_email
    _copy_email(ctl, "old-co", a, c)
    with pytest.raises(DecryptionFailed, match="does not decrypt"):
        email_of(ctl, "old-co", c)
    check = json.loads(cli("secrets", "check", "--json").stdout)
    [row] = [c for c in check["checks"] if c["name"] == "PII row binding"]
    assert row["ok"], row
