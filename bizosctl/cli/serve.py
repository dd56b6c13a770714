"""``bizosctl serve``: run the API server (FastAPI on uvicorn) until stopped."""

from __future__ import annotations

import ipaddress
import signal

import typer
from pydantic import BaseModel

from bizosctl.cli.output import (
    DryRunOpt,
    JsonOpt,
    handle_errors,
    print_json,
    stderr_console,
    stdout_console,
)
from bizosctl.errors import InvalidInput


class ServePlan(BaseModel):
    host: str
    port: int
    workers: int
    url: str
    tls: bool
    rate_limit: str
    rate_limit_store: str
    cors_origins: list[str]
    env: str


def plan_serve(host: str, port: int, workers: int) -> ServePlan:
    from bizosctl.config import get_settings

    s = get_settings()
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise InvalidInput(
            f"--host {host!r}: give an IP address, e.g. 127.0.0.1 or 0.0.0.0"
        ) from None
    if not 1 <= port <= 65535:
        raise InvalidInput(f"--port {port}: between 1 and 65535")
    if not 1 <= workers <= 64:
        raise InvalidInput(f"--workers {workers}: between 1 and 64")
    tls = bool(s.tls_cert_file and s.tls_key_file)
    if (
        s.env == "production"
        and not ip.is_loopback
        and not tls
        and not (s.public_url and s.public_url.startswith("https://"))
    ):
        raise InvalidInput(
            "production on a non-loopback address needs TLS: BIZOS_TLS_CERT_FILE and "
            "BIZOS_TLS_KEY_FILE, or a TLS proxy in front and an https:// BIZOS_PUBLIC_URL"
        )
    if s.env == "production" and "*" in s.cors_origins:
        raise InvalidInput("production needs an explicit BIZOS_CORS_ORIGINS list, not '*'")
    shown = f"[{host}]" if ip.version == 6 else host
    return ServePlan(
        host=host,
        port=port,
        workers=workers,
        url=f"{'https' if tls else 'http'}://{shown}:{port}",
        tls=tls,
        rate_limit=s.rate_limit or "100/10seconds",
        rate_limit_store="redis" if s.redis_url else "memory",
        cors_origins=s.cors_origins,
        env=s.env,
    )


@handle_errors
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8080, "--port", "-p", help="TCP port."),
    workers: int = typer.Option(
        1, "--workers", "-w", help="Worker processes (rate limits need BIZOS_REDIS_URL above 1)."
    ),
    dry_run: bool = DryRunOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Serve the API (/api/v1, /healthz, /readyz, /openapi.json, /.well-known/jwks.json).

    Runs until SIGTERM or Ctrl-C, then finishes the requests in flight. With several workers,
    set BIZOS_REDIS_URL so that the rate limits count across them. --dry-run checks the
    settings and prints what would be served.

    Example: bizosctl serve --host 127.0.0.1 --port 8080 --workers 2
    """
    plan = plan_serve(host, port, workers)
    if dry_run:
        if json_out:
            print_json(plan)
        else:
            stdout_console().print(
                f"would serve {plan.url} with {plan.workers} worker(s), rate limit "
                f"{plan.rate_limit} ({plan.rate_limit_store}), env {plan.env}",
                markup=False,
            )
        return
    import uvicorn

    from bizosctl.catalog.control import get_control

    get_control().require_initialized()
    from bizosctl.config import get_settings

    s = get_settings()
    stderr_console().print(f"serving {plan.url} ({plan.workers} worker(s))", markup=False)
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again under the handler
    # it found: a plain return here makes SIGTERM a clean stop (exit 0), as for `worker`.
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.run(
        "bizosctl.api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        server_header=False,
        ssl_certfile=str(s.tls_cert_file) if plan.tls else None,
        ssl_keyfile=str(s.tls_key_file) if plan.tls else None,
    )
    stderr_console().print("server stopped", markup=False)
    if json_out:
        print_json({"served": plan.model_dump(), "stopped": True})


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
