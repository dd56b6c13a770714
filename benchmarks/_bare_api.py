"""The benchmark's bare endpoint: FastAPI running the same query as ``GET /api/v1/invoices``
(the same core function, the same serialisation) for one fixed tenant, with no
authentication, RBAC, rate limit, route lookup or middleware. Served by uvicorn as
``_bare_api:create`` (factory) from ``benchmarks/``; the tenant is ``BENCH_TENANT``."""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.orm import Session


def create() -> FastAPI:
    from bizosctl.catalog.control import get_control
    from bizosctl.db.engines import get_engine
    from bizosctl.resources.invoices import list_invoices
    from bizosctl.tenancy.router import search_path

    ctl = get_control()
    route = ctl.route(os.environ["BENCH_TENANT"])
    handle = ctl.server(route.server)
    # no ping at checkout, as tenant_session (the bare side does no less than ours)
    engine = get_engine(
        handle.login_url(route.database, route.role, route.password), pre_ping=False
    )
    engine = engine.execution_options(postgresql_readonly=True)
    context = text(
        "SELECT set_config('bizos.tenant_id', :t, true), set_config('bizos.actor', 'bench', "
        "true), set_config('search_path', :p, true)"
    )
    params = {"t": str(route.tenant_id), "p": search_path(route)}
    app = FastAPI()

    @app.get("/invoices")
    def invoices(limit: int = 20) -> Any:
        with Session(engine) as s, s.begin():
            s.execute(context, params)
            return list_invoices(s, limit=limit)

    return app
