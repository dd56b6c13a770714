"""No personal data reaches the model: every line of the PII corpus (tests/data/pii_corpus.txt)
goes through the gate to a loopback Gemini, and no value marked in the corpus may appear in
what the server received, in any form (verbatim, another case, JSON-escaped, or its digits with
other separators); the answer the tenant gets has the values back."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import insert

from bizosctl.ai.gate import Gate
from bizosctl.catalog.control import Control
from bizosctl.config import Settings
from bizosctl.privacy.corpus import load
from bizosctl.security.fields import blind_index, encrypt
from bizosctl.tenancy.router import tenant_session
from tenant_schema.models import Customer, Member
from tests.ai_fakes import FakeModel

CORPUS = load(Path(__file__).parent / "data" / "pii_corpus.txt")
_NUMBERISH = re.compile(r"[\d][\d\s.\-()+/]*[\d]")


@pytest.fixture(scope="module")
def model() -> Iterator[FakeModel]:
    fake = FakeModel()
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def tenant(fleet: Control) -> str:
    """A tenant whose customers and one member carry the corpus's dictionary names."""
    from bizosctl.tenancy.provision import create_tenant

    slug = f"pii{uuid.uuid4().hex[:8]}"
    create_tenant(fleet, slug=slug, name="PII", tier="schema", region="id")
    route = fleet.route(slug)
    ring = fleet.keyring
    first, *rest = CORPUS.names
    mid = uuid.uuid4()
    with tenant_session(fleet, slug, actor="test") as s:
        s.execute(insert(Member).values(
            tenant_id=route.tenant_id, id=mid,
            email_enc=encrypt(ring, "m@x.example", tenant_id=route.tenant_id, table="members",
                              column="email", row=mid),
            email_bidx=blind_index(ring, "m@x.example"),
            name_enc=encrypt(ring, first, tenant_id=route.tenant_id, table="members",
                             column="name", row=mid),
        ))  # fmt: skip
        for name in rest:
            s.execute(insert(Customer).values(tenant_id=route.tenant_id, name=name))
    return slug


def digits(value: str) -> str:
    return re.sub(r"\D", "", value)


def leaks(value: str, kind: str, sent: str) -> list[str]:
    """The forms of ``value`` found in ``sent`` (the prompt text the model received)."""
    found = []
    if value in sent:
        found.append("verbatim")
    if value.casefold() in sent.casefold():
        found.append("another case")
    if json.dumps(value)[1:-1] in sent:
        found.append("json-escaped")
    d = digits(value)
    if kind == "PHONE":
        d = d.removeprefix("62").removeprefix("0")  # +62 812..., 62812..., 0812...
    if len(d) >= 8 and any(d in digits(run) for run in _NUMBERISH.findall(sent)):
        found.append("digits")
    return found


def test_the_names_dictionary_comes_from_members_and_customers(fleet: Control, tenant: str) -> None:
    gate = Gate(fleet, settings=Settings(ai_provider="offline"))
    assert set(gate.tenant_names(tenant)) == set(CORPUS.names)


def test_no_pii_value_reaches_the_model(fleet: Control, model: FakeModel, tenant: str) -> None:
    model.reset()
    gate = Gate(fleet, settings=Settings(ai_provider="gemini", gemini_api_key="k",
                                         gemini_base_url=model.url))  # fmt: skip
    positives = [s for s in CORPUS.samples if s.spans]
    assert len(CORPUS.samples) >= 300 and len(positives) >= 200
    found: list[str] = []
    try:
        for sample in CORPUS.samples:
            before = model.calls
            answer = gate.ask(tenant, feature="test.privacy", prompt=sample.text)
            assert model.calls == before + 1 and not answer.degraded
            body = json.loads(model.raw[-1])
            sent = "".join(p["text"] for c in body["contents"] for p in c["parts"])
            raw = model.raw[-1].decode()
            for span in sample.spans:
                value = sample.text[span.start : span.end]
                forms = leaks(value, span.kind, sent) + (["raw body"] if value in raw else [])
                if forms:
                    found.append(f"line {sample.line}: {span.kind} {value!r} sent {forms}")
            # The fake echoes the prompt: the tenant gets its own text back, values restored.
            assert answer.text == sample.text, sample.line
    finally:
        gate.close()
    assert found == []
