"""schemathesis over /openapi.json, authenticated with an API key of every scope: generated
requests (valid and not) against the real server find no 5xx, and every answer matches the
document (status codes, content types, bodies)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from apiserver import Org, make_org, serve_app
from conftest import unique_slug
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from bizosctl.catalog.control import Control
from bizosctl.config import Settings


@pytest.fixture(scope="module")
def org(fleet: Control) -> Iterator[Org]:
    from bizosctl.tenancy.provision import delete_tenant

    made = make_org(fleet, unique_slug("st"))
    yield made
    delete_tenant(fleet, made.slug)


@pytest.fixture(scope="module")
def api_schema(fleet: Control, org: Org) -> Iterator[schemathesis.BaseSchema]:
    ctl = Control(Settings(rate_limit="1000000/second", rate_limits={"auth": "1000000/second"}))
    with serve_app(ctl) as url:
        loaded = schemathesis.openapi.from_url(f"{url}/openapi.json")
        loaded.config.update(base_url=url, headers={"Authorization": f"Bearer {org.keys['all']}"})
        # generated and schema examples; the coverage phase's thousands of boundary cases
        # would cost minutes (each login runs bcrypt)
        loaded.config.phases.update(phases=["examples", "fuzzing"])
        yield loaded


# Not the upgrade: a 202 there starts a real move of the tenant (tested on its own in
# test_api_admin.py), which would leave it moving for the next examples.
schema = schemathesis.pytest.from_fixture("api_schema").exclude(path="/api/v1/tenant/upgrade")


@schema.parametrize()
@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_api_keeps_its_own_schema(case: schemathesis.Case) -> None:
    # the default checks (no 5xx, status codes, content types, bodies and headers as
    # documented) but "schema-valid data is accepted": a business rule (a discount over 20 %,
    # an unknown customer) refuses schema-valid bodies with a 422 or 404 problem by design
    case.call_and_validate(excluded_checks=[positive_data_acceptance])
