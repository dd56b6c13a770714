"""Liveness, readiness and the public keys that verify our access tokens."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from bizosctl.api.deps import CtlDep, get_limiter

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is up")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="The catalog and every region's servers answer")
def readyz(ctl: CtlDep, request: Request) -> JSONResponse:
    from bizosctl.fleet_health import server_reachability

    checks: dict[str, Any] = {}
    ok = True
    try:
        servers = server_reachability(ctl)
        checks["catalog"] = {"ok": True}
        checks["servers"] = servers
        ok = all(v["ok"] for v in servers.values())
    except Exception as exc:  # the catalog itself is down
        checks["catalog"] = {"ok": False, "error": str(exc).splitlines()[0][:200]}
        ok = False
    limiter = get_limiter(request).describe()
    checks["rate_limit_store"] = limiter
    body: dict[str, Any] = {"status": "ready" if ok else "unavailable", "checks": checks}
    if not limiter["ok"]:
        body["degraded"] = ["rate_limit_store"]
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/.well-known/jwks.json", summary="Public keys that verify access tokens")
def jwks(ctl: CtlDep) -> dict[str, Any]:
    from bizosctl.security.jwt import jwks as keyset

    return keyset(ctl)
