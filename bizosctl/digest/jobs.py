"""The ``digest.run`` job (``bizosctl:digest.run``): make and deliver one tenant's digest for
one day. The scheduler defers it at 05:00 in the tenant's zone; ``digest run --background``
defers it too. Idempotent: a second run for the same tenant and day creates nothing."""

from __future__ import annotations

from typing import Any

from procrastinate import Blueprint, JobContext

from bizosctl.jobs.retry import ErrorTreeRetry

blueprint = Blueprint()

TASK = "digest.run"


@blueprint.task(name=TASK, queue="digests", pass_context=True, retry=ErrorTreeRetry())
def run(context: JobContext, tenant: str, day: str, deliver: str = "both") -> dict[str, Any]:
    """Make (and deliver) ``tenant``'s digest of ``day`` (an ISO date)."""
    from bizosctl.catalog.control import Control, get_control
    from bizosctl.digest.run import make_digest, parse_day, tenant_refs

    ctl = context.additional_context.get("ctl")
    if not isinstance(ctl, Control):
        ctl = get_control()
    (ref,) = tenant_refs(ctl, [tenant])
    d = make_digest(ctl, ref, day=parse_day(day), deliver=deliver)  # type: ignore[arg-type]
    return {
        "tenant": tenant,
        "date": day,
        "created": getattr(d, "created", False),
        "degraded": getattr(d, "degraded", False),
    }
