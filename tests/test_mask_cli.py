"""``bizosctl mask``: stdin to masked stdout, --json without values, --tenant's dictionary."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import unique_slug
from sqlalchemy import insert
from typer.testing import CliRunner

from bizosctl.catalog.control import Control
from bizosctl.cli.main import app
from bizosctl.privacy.dictionary import tenant_names
from bizosctl.security.fields import encrypt
from bizosctl.tenancy.provision import create_tenant, delete_tenant
from bizosctl.tenancy.router import tenant_session
from tenant_schema.models import Customer, Member

# Names no generic rule finds: only the tenant's dictionary knows them.
MEMBER = "Kresnanda Wijayakusuma"
CUSTOMER = "Oktaviani Larasati"
TEXT = f"Tolong kabari {MEMBER} dan {CUSTOMER}, atau Pak Budi di 0812-3456-7890.\n"


def run(*args: str, stdin: bytes | None = None) -> Any:
    return CliRunner().invoke(app, ["mask", *args], input=stdin, catch_exceptions=False)


@pytest.fixture(scope="module")
def tenant(fleet: Control) -> Iterator[str]:
    slug = unique_slug("m")
    create_tenant(fleet, slug=slug, name="Mask Test", tier="schema", region="global")
    tid = fleet.route(slug).tenant_id
    mid = uuid.uuid4()
    with tenant_session(fleet, slug, actor="test") as s:
        s.execute(
            insert(Member).values(
                tenant_id=tid,
                id=mid,
                email_enc=encrypt(
                    fleet.keyring,
                    "k@x.example",
                    tenant_id=tid,
                    table="members",
                    column="email",
                    row=mid,
                ),
                email_bidx="test-" + mid.hex,
                name_enc=encrypt(
                    fleet.keyring, MEMBER, tenant_id=tid, table="members", column="name", row=mid
                ),
            )
        )
        s.execute(insert(Customer).values(tenant_id=tid, name=CUSTOMER))
        s.execute(insert(Customer).values(tenant_id=tid, name="PT Maju Jaya"))
    yield slug
    delete_tenant(fleet, slug)


def test_tenant_names_reads_members_decrypted_and_customers(fleet: Control, tenant: str) -> None:
    assert sorted(tenant_names(fleet, tenant)) == sorted([MEMBER, CUSTOMER, "PT Maju Jaya"])


def test_mask_prints_the_masked_text() -> None:
    r = run(stdin=TEXT.encode())
    assert r.exit_code == 0, r.stderr
    assert r.stdout == (
        f"Tolong kabari {MEMBER} dan {CUSTOMER}, atau Pak <PERSON_1> di <PHONE_1>.\n"
    )


def test_mask_with_tenant_masks_its_members_and_customers(fleet: Control, tenant: str) -> None:
    r = run("--tenant", tenant, stdin=TEXT.encode())
    assert r.exit_code == 0, r.stderr
    assert r.stdout == (
        "Tolong kabari <PERSON_1> dan <PERSON_2>, atau Pak <PERSON_3> di <PHONE_1>.\n"
    )


def test_mask_json_gives_spans_and_never_the_values(fleet: Control, tenant: str) -> None:
    r = run("--tenant", tenant, "--json", stdin=TEXT.encode())
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert set(doc) == {"text", "entities"}
    assert [(e["kind"], TEXT[e["start"] : e["end"]]) for e in doc["entities"]] == [
        ("PERSON", MEMBER),
        ("PERSON", CUSTOMER),
        ("PERSON", "Budi"),
        ("PHONE", "0812-3456-7890"),
    ]
    for value in (MEMBER, CUSTOMER, "Budi", "0812", "3456"):
        assert value not in r.stdout


def test_mask_unknown_tenant_exits_3(fleet: Control) -> None:
    r = run("--tenant", "nosuchtenant", stdin=TEXT.encode())
    assert r.exit_code == 3
    assert r.stderr == "error: no tenant named 'nosuchtenant'\n"
    assert r.stdout == ""


def test_mask_empty_stdin_exits_2() -> None:
    r = run(stdin=b"  \n")
    assert r.exit_code == 2
    assert r.stderr == "error: no text on stdin: pipe it in, e.g. bizosctl mask < message.txt\n"


def test_mask_non_utf8_stdin_exits_2() -> None:
    r = run("--json", stdin="Pak Budi café".encode("latin-1"))
    assert r.exit_code == 2
    assert r.stderr == "error: stdin is not UTF-8 text (byte 12)\n"
    assert json.loads(r.stdout)["error"]["type"] == "invalid-input"
