"""``bizosctl digest`` (run, list, show): the CEO digest's face."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import typer

from bizosctl.cli.output import (
    DryRunOpt,
    JsonOpt,
    clean,
    handle_errors,
    print_json,
    stderr_console,
    stdout_console,
    table,
)

if TYPE_CHECKING:
    from bizosctl.catalog.control import Control
    from bizosctl.digest.run import Deliver, DigestPreview, DigestPublic

app = typer.Typer(
    help="The CEO digest: yesterday's figures and three insights per tenant, as a card for "
    "its Admins and by e-mail.\n\nExample: bizosctl digest run --all --json",
    no_args_is_help=True,
)


def _ctl() -> Control:
    from bizosctl.catalog.control import get_control

    return get_control()


@app.command("run")
@handle_errors
def run(
    tenant: list[str] | None = typer.Option(
        None, "--tenant", "-t", help="This tenant (repeatable).", show_default=False
    ),
    all_: bool = typer.Option(False, "--all", help="Every active tenant."),
    date: str | None = typer.Option(
        None, "--date", help="The day (ISO date); default: yesterday in each tenant's zone."
    ),
    deliver: str = typer.Option("both", "--deliver", help="email | card | both."),
    force: bool = typer.Option(False, "--force", help="Make a new version even if one exists."),
    background: bool = typer.Option(
        False, "--background", help="Queue one digest.run job per tenant for `bizosctl worker`."
    ),
    dry_run: bool = DryRunOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Make (and deliver) the digest of each tenant for a day; a digest made already is not
    made again (created false). Safe from cron: exit 0 when every tenant has its digest, 1
    when one failed (the others are still made; the JSON says which), 2 on bad input.

    Example: bizosctl digest run --all --json
    """
    from bizosctl.digest.run import DELIVER, parse_day, run_digests, tenant_refs
    from bizosctl.errors import InvalidInput

    if bool(tenant) == all_:
        raise InvalidInput("name tenants with --tenant SLUG, or use --all (one of the two)")
    if deliver not in DELIVER:
        raise InvalidInput(f"--deliver {deliver!r}: one of email, card, both")
    if background and dry_run:
        raise InvalidInput("--background and --dry-run: choose one")
    day = parse_day(date) if date else None
    mode = cast("Deliver", deliver)
    ctl = _ctl()
    notes = []
    if deliver in ("email", "both") and not ctl.settings.smtp_host:
        notes.append("e-mail is off (BIZOS_SMTP_HOST is not set): cards only")
        if not json_out:
            stderr_console().print(f"[yellow]note:[/] {notes[-1]}")
    refs = tenant_refs(ctl, None if all_ else list(dict.fromkeys(tenant or [])))
    if background:
        _background(ctl, refs, day, deliver, json_out)
        return
    single = len(refs) == 1 and not all_
    if single:
        from bizosctl.digest.run import make_digest

        # One tenant: its error is the command's (exit 2 for an unknown zone, 3 not found).
        one = make_digest(
            ctl,
            refs[0],
            day=day,
            deliver=mode,
            force=force,
            dry_run=dry_run,
        )
        from bizosctl.digest.run import DigestPreview, DigestRun

        result = DigestRun(
            digests=[] if isinstance(one, DigestPreview) else [one],
            previews=[one] if isinstance(one, DigestPreview) else [],
        )
        result.summary = {
            "created": int(getattr(one, "created", False)),
            "existing": int(not getattr(one, "created", True)),
            "degraded": int(getattr(one, "degraded", False)),
            "previewed": len(result.previews),
            "failed": 0,
        }
    else:
        result = run_digests(
            ctl,
            refs,
            day=day,
            deliver=mode,
            force=force,
            dry_run=dry_run,
        )
    if json_out:
        doc: dict[str, Any] = {
            "digests": [_doc(d) for d in result.digests],
            "failed": result.failed,
            "summary": result.summary,
            "notes": notes,
        }
        if dry_run:
            doc = {"dry_run": True, "previews": result.previews, **doc}
        print_json(doc)
    else:
        out = stdout_console()
        for p in result.previews:
            _render_preview(p)
        for d in result.digests:
            _render(d, out)
        for f in result.failed:
            stderr_console().print(f"[red]failed[/] {clean(f.tenant)}: {clean(f.error)}")
        if len(refs) > 1:
            sm = result.summary
            stderr_console().print(
                f"{sm['created']} made, {sm['existing']} existed, {sm['failed']} failed"
            )
    if result.failed:
        raise typer.Exit(1)


def _doc(d: DigestPublic) -> dict[str, Any]:
    return {
        "tenant": d.tenant,
        "date": d.date,
        "version": d.version,
        "zone": d.zone,
        "insights": d.insights,
        "degraded": d.degraded,
        "reason": d.reason,
        "provider": d.provider,
        "delivered": d.delivered,
        "emails": d.emails,
        "created": d.created,
        "id": d.id,
    }


def _render(d: DigestPublic, out: Any) -> None:
    state = "made" if d.created else "existed"
    flag = f", degraded ({d.reason})" if d.degraded else ""
    out.print(
        f"{d.tenant} {d.date.isoformat()} v{d.version} ({state}, {d.provider}{flag}; "
        f"delivered: {', '.join(d.delivered) or 'nothing'})",
        markup=False,
    )
    for n, i in enumerate(d.insights, 1):
        out.print(
            f"  {n}. {i.title} [{i.figure}]\n     {i.detail}\n     -> {i.action}", markup=False
        )


def _render_preview(p: DigestPreview) -> None:
    out = stdout_console()
    out.print(
        f"{p.tenant} {p.date.isoformat()} (dry run: nothing stored or sent"
        f"{'; a digest exists for that day' if p.exists else ''})",
        markup=False,
    )
    out.print("masked prompt:", markup=False)
    out.print(p.masked_prompt, markup=False)
    out.print("insights (offline rules; a dry run asks no model):", markup=False)
    for n, i in enumerate(p.insights, 1):
        out.print(f"  {n}. {i.title} [{i.figure}] -> {i.action}", markup=False)


def _background(ctl: Control, refs: list[Any], day: Any, deliver: str, json_out: bool) -> None:
    from bizosctl.digest.jobs import TASK
    from bizosctl.digest.run import zone_for
    from bizosctl.jobs.queue import enqueue_task
    from bizosctl.tenancy.zones import local_yesterday

    queued = []
    with ctl.catalog() as s:
        for ref in refs:
            d = day or local_yesterday(zone_for(ref))
            key = f"digest:{ref.slug}:{d.isoformat()}"
            job = enqueue_task(
                s,
                task=TASK,
                args={"tenant": ref.slug, "day": d.isoformat(), "deliver": deliver},
                queue=ctl.settings.digest_queue,
                lock=key,
                queueing_lock=key,
            )
            queued.append(
                {
                    "tenant": ref.slug,
                    "date": d.isoformat(),
                    "job": job,
                    "already_queued": job is None,
                }
            )
    if json_out:
        print_json({"queued": queued})
        return
    for q in queued:
        what = "already queued" if q["already_queued"] else f"queued as job {q['job']}"
        stdout_console().print(f"{q['tenant']} {q['date']}: {what}", markup=False)


@app.command("list")
@handle_errors
def list_(
    tenant: str = typer.Argument(..., help="The tenant's slug."),
    since: str | None = typer.Option(None, "--since", help="From this day (ISO date)."),
    limit: int = typer.Option(30, "--limit", help="At most this many (1-1000)."),
    json_out: bool = JsonOpt,
) -> None:
    """A tenant's past digests, newest first.

    Example: bizosctl digest list acme --since 2026-11-01 --json
    """
    from bizosctl.digest.run import list_digests, parse_day

    rows = list_digests(_ctl(), tenant, since=parse_day(since) if since else None, limit=limit)
    if json_out:
        print_json({"digests": [_doc(d) for d in rows]})
        return
    lines = [
        [
            d.date.isoformat(),
            d.version,
            d.provider,
            "yes" if d.degraded else "",
            ", ".join(d.delivered),
            d.insights[0].title if d.insights else "",
        ]
        for d in rows
    ]
    table(
        f"digests of {tenant}", ["date", "v", "by", "degraded", "delivered", "first insight"], lines
    )


@app.command("show")
@handle_errors
def show(
    tenant: str = typer.Argument(..., help="The tenant's slug."),
    date: str | None = typer.Option(None, "--date", help="The day (default: the latest)."),
    version: int | None = typer.Option(None, "--version", help="That version (default: latest)."),
    json_out: bool = JsonOpt,
) -> None:
    """One digest with its figures and insights.

    Example: bizosctl digest show acme --date 2026-12-01 --json
    """
    from bizosctl.digest.run import parse_day, show_digest

    d = show_digest(_ctl(), tenant, day=parse_day(date) if date else None, version=version)
    if json_out:
        print_json({"digest": {**_doc(d), "figures": d.figures}})
        return
    _render(d, stdout_console())
