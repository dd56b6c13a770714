"""The API server's app factory: ``create_app()`` is what ``bizosctl serve`` runs."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from bizosctl import __version__
from bizosctl.api import problems
from bizosctl.api.middleware import Hygiene
from bizosctl.api.ratelimit import Limiter
from bizosctl.catalog.control import Control
from bizosctl.errors import ConfigError

log = logging.getLogger("bizosctl.api")


def create_app(ctl: Control | None = None) -> FastAPI:
    """The API for ``ctl``'s home (default: the configured one)."""
    from bizosctl.api.routes import (
        api_keys,
        audit,
        auth,
        gdpr,
        health,
        invoices,
        me,
        members,
        notifications,
        oauth,
        operations,
        projects,
        tenant,
        webhooks,
    )
    from bizosctl.catalog.control import get_control

    ctl = ctl or get_control()
    settings = ctl.settings
    if settings.env == "production" and "*" in settings.cors_origins:
        raise ConfigError("production needs an explicit BIZOS_CORS_ORIGINS list, not '*'")
    app = FastAPI(
        title="bizosctl API",
        version=__version__,
        description="The Enterprise Business OS API: one tenant per API key or member session.",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.ctl = ctl
    app.state.limiter = Limiter(settings)
    problems.install(app)

    def openapi() -> dict[str, object]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            app.openapi_schema = problems.document_problems(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    description=app.description,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    for module in (
        health,
        auth,
        oauth,
        me,
        members,
        projects,
        notifications,
        audit,
        invoices,
        operations,
        api_keys,
        webhooks,
        tenant,
        gdpr,
    ):
        app.include_router(module.router)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
        expose_headers=["X-Request-ID", "RateLimit", "RateLimit-Policy", "Retry-After"],
    )
    https = bool(settings.tls_cert_file) or bool(
        settings.public_url and settings.public_url.startswith("https://")
    )
    app.add_middleware(Hygiene, max_body=settings.api_max_body_bytes, hsts=https)
    return app
