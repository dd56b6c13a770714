"""``bizosctl secrets list|rotate|retire-due|check``."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

import typer

from bizosctl.cli.output import (
    BackgroundOpt,
    DryRunOpt,
    JsonOpt,
    YesOpt,
    confirm_destructive,
    handle_errors,
    print_json,
    stderr_console,
    stdout_console,
    table,
)

if TYPE_CHECKING:
    from bizosctl.catalog.control import Control

app = typer.Typer(
    help="Keys and secrets: list versions, rotate online, check the deployment.\n\n"
    "Example: bizosctl secrets rotate pii",
    no_args_is_help=True,
)
rotate_app = typer.Typer(
    help="Rotate a secret without downtime.\n\nExample: bizosctl secrets rotate jwt",
    no_args_is_help=True,
)
app.add_typer(rotate_app, name="rotate")


class QuarantineAction(enum.StrEnum):
    keep = "keep"
    null = "null"


QuarantineOpt = typer.Option(
    QuarantineAction.keep,
    "--quarantine-action",
    help="What to do with values that no key decrypts: keep them (reported) or set the column "
    "to NULL where it allows NULL.",
)


def _ctl() -> Control:
    from bizosctl.catalog.control import get_control

    return get_control()


def _done(doc: Any, json_out: bool, summary: str) -> None:
    if json_out:
        print_json(doc)
    else:
        stdout_console().print(summary)


@app.command("list")
@handle_errors
def list_(json_out: bool = JsonOpt) -> None:
    """Each purpose's key versions: state, created, retired, how many values use each.

    States: primary (writes), staged (the next primary, which every process can already read,
    so a rotation switches to it at once), readable (still decrypts), retired (reads nothing;
    its material is kept for BIZOS_KEY_DESTROY_AFTER), destroyed (its material is gone: values
    under it can never be decrypted). Never shows key material.

    Example: bizosctl secrets list --json
    """
    from bizosctl.security.secrets import list_keys

    keys = list_keys(_ctl())
    if json_out:
        print_json({"purposes": keys})
        return
    rows = [
        [
            p.purpose,
            v.version,
            v.state,
            v.created_at.strftime("%Y-%m-%d %H:%M"),
            v.retired_at.strftime("%Y-%m-%d %H:%M") if v.retired_at else "",
            v.retire_after.strftime("%Y-%m-%d %H:%M") if v.retire_after else "",
            v.destroyed_at.strftime("%Y-%m-%d %H:%M") if v.destroyed_at else "",
            "-" if v.values is None else v.values,
            v.master or "",
        ]
        for p in keys
        for v in p.versions
    ]
    stdout_console().print(
        table(
            "Keyring",
            [
                "purpose",
                "version",
                "state",
                "created",
                "retired",
                "retire after",
                "destroyed",
                "values",
                "wrapped by",
            ],
            rows,
        )
    )


@rotate_app.command("pii")
@handle_errors
def rotate_pii(
    batch: int = typer.Option(2000, "--batch", min=1, max=50_000, help="Rows per transaction."),
    workers: int | None = typer.Option(
        None,
        "--workers",
        min=0,
        max=32,
        help="Processes re-encrypting large tables (default: one more than the cores, at most 4; "
        "0 = none).",
    ),
    fresh_key: bool = typer.Option(
        False,
        "--fresh-key",
        help="Switch to a newly made key instead of the staged one (after a leak of the keyring:"
        " the staged key is as exposed as the current one); waits one keyring reload period.",
    ),
    quarantine_action: QuarantineAction = QuarantineOpt,
    background: bool = BackgroundOpt,
    dry_run: bool = DryRunOpt,
    json_out: bool = JsonOpt,
) -> None:
    """New PII key, then re-encrypt every encrypted column of every tenant, online.

    The new key is the staged one (see `secrets list`), so the switch is immediate; the next
    one is staged at the end. Resumable: after a crash, run it again. The old version is
    retired when nothing uses it but values that no key decrypts: those are quarantined
    (recorded in the operation, listed, exit code 1) and the rest of the fleet is rotated.

    Example: bizosctl secrets rotate pii
    """
    from bizosctl.security.rotation import rotate_pii, submit_pii_rotation
    from bizosctl.security.rotation_plans import plan_pii_rotation

    ctl = _ctl()
    if dry_run:
        pii = plan_pii_rotation(ctl, fresh_key=fresh_key)
        usage = pii.values_by_version
        key = pii.describe()
        if pii.would_resume:
            key = f"{key} (first finishing the interrupted operation {pii.would_resume[0]})"
        _done(
            pii,
            json_out,
            f"would switch to {key} and re-encrypt {pii.would_rewrite} value(s)"
            + (": " + ", ".join(f"{n} at v{v}" for v, n in sorted(usage.items())) if usage else ""),
        )
        return
    if background:
        from bizosctl.cli.output import print_submitted

        sub = submit_pii_rotation(
            ctl,
            batch=batch,
            workers=workers,
            fresh_key=fresh_key,
            quarantine_action=quarantine_action.value,
        )
        print_submitted(sub, json_out=json_out)
        return
    if json_out:
        doc = rotate_pii(
            ctl,
            batch=batch,
            workers=workers,
            fresh_key=fresh_key,
            quarantine_action=quarantine_action.value,
        )
    else:
        counts = {"n": 0}
        with stderr_console().status("re-encrypting...") as status:

            def progress(table_name: str, n: int) -> None:
                counts["n"] += n
                status.update(f"re-encrypting... {counts['n']} row(s) ({table_name})")

            doc = rotate_pii(
                ctl,
                batch=batch,
                workers=workers,
                fresh_key=fresh_key,
                quarantine_action=quarantine_action.value,
                progress=progress,
            )
    _done(doc, json_out, _pii_summary(doc))
    _quarantined(doc, json_out)
    _failed(doc, json_out)


def _failed(doc: dict, json_out: bool) -> None:  # type: ignore[type-arg]
    """Exit code 1 when a report says ``ok: false`` (the report was printed already)."""
    if doc.get("ok", True):
        return
    if not json_out:
        stderr_console().print(f"error: {doc.get('error') or 'incomplete'}", markup=False)
    raise typer.Exit(1)


def _pii_summary(doc: dict) -> str:  # type: ignore[type-arg]
    if doc.get("cancelled"):
        return (
            f"pii rotation to v{doc['version']} cancelled after {doc['rows_rewritten']} row(s) "
            "re-encrypted"
        )
    if doc.get("skipped") or doc.get("left"):
        return (
            f"pii rotation to v{doc['version']} incomplete: {doc['rows_rewritten']} row(s) "
            f"re-encrypted; left under old versions: {doc.get('left') or 'nothing'}; not "
            f"rotated (moving): {', '.join(doc.get('skipped') or []) or 'nothing'}"
        )
    destroyed = f", destroyed {doc['destroyed']}" if doc.get("destroyed") else ""
    return (
        f"pii is now v{doc['version']}: {doc['rows_rewritten']} row(s) re-encrypted, "
        f"retired {doc['retired'] or 'nothing'}{destroyed}, v{doc['staged']} staged for the "
        "next rotation"
    )


def _quarantined(doc: dict, json_out: bool) -> None:  # type: ignore[type-arg]
    """List the values a PII rotation quarantined; exit code 1 when there are any."""
    bad = doc.get("quarantined") or []
    if not bad:
        return
    if not json_out:
        out = stdout_console()
        out.print("quarantined (no key decrypts them):", markup=False)
        for e in bad:  # one line each, never wrapped: easy to grep
            out.print(
                f"  tenant {e['tenant_id']} {e['target']} {e['table']} key={e['key']} "
                f"{e['column']}: {e['reason']} ({e.get('action', 'kept')})",
                markup=False,
                soft_wrap=True,
            )
        stderr_console().print(
            f"{len(bad)} value(s) quarantined (they do not decrypt); every other value is rotated",
            markup=False,
        )
    raise typer.Exit(1)


@rotate_app.command("jwt")
@handle_errors
def rotate_jwt(
    fresh_key: bool = typer.Option(
        False,
        "--fresh-key",
        help="After a leak: sign with a newly made key instead of the staged one (waits one "
        "keyring reload period so that every process can verify it first), and retire every "
        "other key at once (tokens signed before stop verifying: sessions end).",
    ),
    dry_run: bool = DryRunOpt,
    json_out: bool = JsonOpt,
) -> None:
    """New JWT signing key with a new kid; tokens signed before stay valid until they expire.

    The new key is the staged one, which every process already verifies with: no token meets
    a process that does not know its kid.

    Example: bizosctl secrets rotate jwt
    """
    from bizosctl.security.secrets import plan_jwt_rotation
    from bizosctl.security.secrets import rotate_jwt as rotate

    if dry_run:
        plan = plan_jwt_rotation(_ctl(), fresh_key=fresh_key)
        _done(plan, json_out, f"would sign with {plan.describe()}")
        return
    doc = rotate(_ctl(), fresh_key=fresh_key)
    _done(
        doc,
        json_out,
        f"new signing key {doc['kid']}; "
        + (
            f"previous keys retired at once: {doc['retired']}"
            if fresh_key
            else f"previous keys valid for {doc['previous_valid_for_s']}s more"
        ),
    )


@rotate_app.command("db-credentials")
@handle_errors
def rotate_credentials(dry_run: bool = DryRunOpt, json_out: bool = JsonOpt) -> None:
    """New key for the secrets the catalog holds (server URLs, passwords); re-seal them all.

    Example: bizosctl secrets rotate db-credentials
    """
    from bizosctl.security.secrets import plan_credentials_rotation, rotate_credentials_key

    if dry_run:
        plan = plan_credentials_rotation(_ctl())
        line = (
            f"would make db-credentials v{plan.new_version}, re-seal "
            f"{plan.would_reseal} value(s) and retire "
            + (", ".join(f"v{v}" for v in plan.would_retire) or "nothing")
        )
        if plan.would_resume:
            line = f"would first finish the interrupted operation {plan.would_resume[0]}"
        _done(plan, json_out, line)
        return
    doc = rotate_credentials_key(_ctl())
    _done(
        doc,
        json_out,
        f"db-credentials is now v{doc['version']}: {doc['resealed']} value(s) re-sealed",
    )


@rotate_app.command("db-password")
@handle_errors
def rotate_db_password(
    tenant: str | None = typer.Option(None, "--tenant", help="One isolated tenant's role."),
    shared: str | None = typer.Option(
        None, "--shared", help="The shared login role of every server of this region."
    ),
    server: str | None = typer.Option(None, "--server", help="This server's shared login role."),
    all_: bool = typer.Option(
        False, "--all", help="Every isolated tenant and every server's shared login role."
    ),
    grace: str = typer.Option(
        "2s",
        "--grace",
        help="How long the previous role keeps logging in (at most 1h); then it loses LOGIN "
        "and its sessions are terminated.",
    ),
    finish: bool = typer.Option(
        False,
        "--finish",
        help="Only end the grace of rotations an interrupted run left unfinished.",
    ),
    dry_run: bool = DryRunOpt,
    json_out: bool = JsonOpt,
) -> None:
    """New password for database login roles, with no failed request.

    Each login role alternates between two roles (t_x / t_x__b for an isolated tenant,
    bizos_app_shared / bizos_app_shared__b for a server's shared and schema tiers): the idle
    one gets a new password, the catalog switches to it, and after --grace the previous one
    loses LOGIN and its password, and its sessions are terminated. A run interrupted during
    the grace is finished by the next run (or --finish).

    Example: bizosctl secrets rotate db-password --all
    """
    from bizosctl.durations import parse_ms
    from bizosctl.security.dbpasswords import (
        check_grace,
        finish_db_password_rotations,
        plan_db_password,
        plan_finish,
    )
    from bizosctl.security.dbpasswords import rotate_db_password as rotate

    ctl = _ctl()
    if finish:
        if tenant or shared or server or all_:
            from bizosctl.errors import InvalidInput

            raise InvalidInput("--finish takes no --tenant, --shared, --server or --all")
        if dry_run:
            fin = plan_finish(ctl)
            _done(fin, json_out, f"would finish {len(fin.would_finish)} interrupted rotation(s)")
            return
        done = finish_db_password_rotations(ctl)
        retired = [r for d in done for r in d["retired"]]
        killed = sum(d["sessions_terminated"] for d in done)
        _done(
            {"finished": done},
            json_out,
            f"finished {len(done)} rotation(s): retired {', '.join(retired) or 'nothing'}, "
            f"{killed} session(s) terminated",
        )
        return
    grace_ms = check_grace(parse_ms(grace, what="--grace"))
    if dry_run:
        plan = plan_db_password(
            ctl, tenant=tenant, all_=all_, server=server, region=shared, grace_ms=grace_ms
        )
        lines = [f"would rotate {len(plan.would_rotate)} login role(s), grace {grace_ms} ms:"]
        lines += [f"  {p['previous']} -> {p['role']} on {p['server']}" for p in plan.would_rotate]
        if plan.would_finish:
            lines.append(f"and first finish {len(plan.would_finish)} interrupted rotation(s)")
        _done(plan, json_out, "\n".join(lines))
        return
    try:
        doc = rotate(ctl, tenant=tenant, all_=all_, server=server, region=shared, grace_ms=grace_ms)
    except KeyboardInterrupt:
        stderr_console().print(
            "the previous login roles keep LOGIN until the next run: "
            "bizosctl secrets rotate db-password --finish",
            markup=False,
        )
        raise
    summary = (
        f"rotated {len(doc['rotated'])} login role password(s); retired "
        f"{', '.join(doc['retired']) or 'nothing'}, {doc['sessions_terminated']} session(s) "
        "terminated"
    )
    for item in doc.get("refused", []):
        summary += f"\nnot rotated {item['tenant']}: {item['reason']}"
    _done(doc, json_out, summary)


@rotate_app.command("master-key")
@handle_errors
def rotate_master(
    to_kms: str | None = typer.Option(
        None, "--to-kms", help="Wrap the data keys with this AWS KMS key."
    ),
    compromised: bool = typer.Option(
        False,
        "--compromised",
        help="The old master key leaked: then also rotate pii and jwt to fresh keys, "
        "db-credentials and every database password (every session ends).",
    ),
    quarantine_action: QuarantineAction = QuarantineOpt,
    yes: bool = YesOpt,
    dry_run: bool = DryRunOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Re-wrap every data key under a new master key (a new key file, or a KMS key).

    The old key file is replaced: keep a backup of it until the rotation is done. Needs --yes.
    Re-wrapping alone does not help after the old master key leaked (with a copy of the
    catalog it opens every data key): use --compromised.

    Example: bizosctl secrets rotate master-key --compromised --yes
    """
    from bizosctl.security.compromise import compromise_plan, rotate_after_compromise
    from bizosctl.security.master_rotation import rotate_master_key
    from bizosctl.security.rotation_plans import plan_master_key

    ctl = _ctl()
    plan = plan_master_key(ctl, to_kms=to_kms)
    if dry_run:
        target = plan.to if to_kms else f"a new key file written to {plan.key_file}"
        checked = " (the KMS key answered)" if plan.key_checked else ""
        line = (
            f"would re-wrap {plan.data_keys} data key(s), now under {plan.from_}, "
            f"with {target}{checked}"
        )
        if plan.would_resume:
            line += f"; first finishing the interrupted operation {plan.would_resume[0]}"
        doc: dict[str, object] = plan.doc()
        if compromised:
            steps = compromise_plan()
            doc.update(compromised=True, plan=steps)
            line = "would rotate, in order:\n" + "\n".join(
                f"  {i}. {p['step']}: {p['does']}" for i, p in enumerate(steps, 1)
            )
        _done(doc, json_out, line)
        return
    if not compromised:
        confirm_destructive(yes, "replacing the master key")
        one = rotate_master_key(ctl, to_kms=to_kms)
        _done(one, json_out, f"re-wrapped {one['rewrapped']} data key(s) under {one['master']}")
        return
    confirm_destructive(
        yes, "--compromised (it ends every session and re-encrypts all PII; see --dry-run)"
    )
    all_ = rotate_after_compromise(ctl, to_kms=to_kms, quarantine_action=quarantine_action.value)
    if not all_["ok"]:
        _done(all_, json_out, str(all_["error"]))
        raise typer.Exit(1)
    _done(
        all_,
        json_out,
        f"master key now {all_['master-key']['master']}; "
        + _pii_summary(all_["pii"])
        + f"; jwt signs with {all_['jwt']['kid']}, every other key retired; db-credentials v"
        f"{all_['db-credentials']['version']}; "
        f"{len(all_['db-password']['rotated'])} database password(s) rotated",
    )
    _quarantined(all_["pii"], json_out)


@app.command("retire-due")
@handle_errors
def retire_due(dry_run: bool = DryRunOpt, json_out: bool = JsonOpt) -> None:
    """Retire keys past their retire-after, destroy retired keys past their grace period.

    A JWT key retires once no token it signed can be valid (and is destroyed then); a retired
    PII or credentials key's material is destroyed after BIZOS_KEY_DESTROY_AFTER (default
    30d). Rotations and every process's keyring load retire what is due too; run this from
    cron so that destruction does not wait for the next rotation.

    Example: bizosctl secrets retire-due --dry-run
    """
    from bizosctl.security.secrets import retire_and_destroy_due

    doc = retire_and_destroy_due(_ctl(), dry_run=dry_run)
    if json_out:
        print_json(doc)
        return
    verb = ("would retire", "would destroy") if dry_run else ("retired", "destroyed")
    parts = [
        word + " " + ", ".join(f"{d['purpose']} v{d['version']}" for d in items)
        for word, items in zip(verb, (doc.retire, doc.destroy), strict=True)
        if items
    ]
    stdout_console().print("; ".join(parts) if parts else "nothing due", markup=False)


@app.command("check")
@handle_errors
def check(json_out: bool = JsonOpt) -> None:
    """The deployment checklist: keys, master key file, Stripe keys, TLS, CORS, rate limit.

    Exit code 1 when any check fails. Never prints a secret.

    Example: BIZOS_ENV=production bizosctl secrets check --json
    """
    from bizosctl.security.check import run_checks

    checks = run_checks(_ctl())
    ok = all(c.ok for c in checks)
    if json_out:
        print_json({"ok": ok, "checks": checks})
    else:
        rows = [["[green]ok[/]" if c.ok else "[red]FAIL[/]", c.name, c.detail] for c in checks]
        stdout_console().print(
            table("Secrets check", ["", "check", "detail"], rows, markup_cols=(0,))
        )
    if not ok:
        failed = [c.name for c in checks if not c.ok]
        stderr_console().print(f"[red]{len(failed)} check(s) failed:[/] {', '.join(failed)}")
        raise typer.Exit(1)
