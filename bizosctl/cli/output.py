"""Rendering for the command line: one JSON document on stdout, or Rich for people.

Errors become one line on stderr and an exit code (2 bad input, 1 failed, 3 not found, 130
interrupted); with ``--json`` the same error is also the JSON document on stdout, so a pipeline
always parses something (Ctrl-C too: ``{"error": {"type": "interrupted", ...}}``). Tracebacks
only with ``--debug``.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import typer

from bizosctl.errors import BizosError

F = TypeVar("F", bound=Callable[..., Any])

JsonOpt = typer.Option(False, "--json", help="Print one JSON document on stdout, nothing else.")
YesOpt = typer.Option(False, "--yes", "-y", help="Confirm a destructive change.")
DryRunOpt = typer.Option(False, "--dry-run", help="Show the plan; change nothing.")
BackgroundOpt = typer.Option(
    False,
    "--background",
    help="Queue it for a worker (`bizosctl worker`), print the operation's id and exit; "
    "`bizosctl ops show ID` follows it.",
)


def print_submitted(sub: Any, *, json_out: bool) -> None:
    """What ``--background`` prints: the operation's id (and a warning when no worker runs)."""
    if sub.warning:
        stderr_console().print(f"[yellow]warning:[/] {sub.warning}")
    if json_out:
        print_json(sub)
        return
    again = " (an unfinished run, queued again)" if sub.resumed else ""
    stdout_console().print(
        f"queued {sub.kind} of {clean(sub.target)} as operation {sub.operation}{again}; "
        f"follow it with `bizosctl ops show {sub.operation}`",
        markup=False,
    )


def debug_enabled() -> bool:
    return os.environ.get("BIZOS_DEBUG", "") not in ("", "0", "false")


def stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def stderr_line(line: str) -> None:
    """One plain line on stderr, as is (no markup, no wrapping): for lines a long-running
    command reports often (a worker's line per job), where a rich ``Console.print`` costs
    about a hundred times more."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def stdout_console() -> Any:
    from rich.console import Console

    return Console(highlight=False)


def to_jsonable(payload: Any) -> Any:
    from pydantic import BaseModel

    if isinstance(payload, BaseModel):
        return payload.model_dump(mode="json", by_alias=True)
    if isinstance(payload, dict):
        return {k: to_jsonable(v) for k, v in payload.items()}
    if isinstance(payload, list | tuple):
        return [to_jsonable(v) for v in payload]
    return payload


def print_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(to_jsonable(payload), default=str, indent=2) + "\n")
    sys.stdout.flush()


#: Characters that must not reach a terminal raw from data: C0 and C1 controls (ESC starts
#: ANSI/OSC sequences that can retitle, recolour, or with some terminals type into the shell)
#: and the bidirectional overrides that make text read other than it is.
_UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def clean(text: str) -> str:
    """``text`` safe for a terminal: unsafe characters shown as escapes (``\\x1b``)."""
    if not _UNSAFE.search(text):
        return text
    return _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode(), text)


def fail(exc: BizosError, *, json_out: bool) -> NoReturn:
    if json_out:
        print_json(
            {"error": {"type": exc.code, "message": exc.message, "exit_code": exc.exit_code}}
        )
    from rich.text import Text

    # The message may quote data (a database error echoes names and values): no markup, and
    # no control characters.
    line = Text.assemble(("error:", "bold red"), " ", clean(exc.message))
    stderr_console().print(line, soft_wrap=True)
    raise typer.Exit(exc.exit_code)


def handle_errors(fn: F) -> F:
    """Map BizosError (and anything unexpected) to one line and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        json_out = bool(kwargs.get("json_out"))
        from bizosctl.signals import command_started, interruptible

        if command_started():  # Ctrl-C while bizosctl started: nothing has run
            from bizosctl.errors import Interrupted

            fail(Interrupted(), json_out=json_out)
        try:
            with interruptible():
                return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except BizosError as exc:
            if debug_enabled():
                raise
            fail(exc, json_out=json_out)
        except KeyboardInterrupt:
            if debug_enabled():
                raise
            from bizosctl.errors import Interrupted

            fail(Interrupted(), json_out=json_out)
        except Exception as exc:
            if debug_enabled():
                raise
            # Never echo SQL or parameters: they may hold secrets.
            text = " ".join(str(exc).split("[SQL:")[0].split())[:300]
            err = BizosError(
                f"unexpected {type(exc).__name__}: {text} (run with --debug for the traceback)"
            )
            fail(err, json_out=json_out)

    return wrapper  # type: ignore[return-value]


def table(
    title: str | None,
    columns: list[str],
    rows: list[list[Any]],
    *,
    markup_cols: tuple[int, ...] = (),
) -> Any:
    """A Rich table. Cell text is escaped (a tenant named "[/x]" must not break or restyle the
    output) and cleaned of control characters (a value holding ``ESC]0;...`` must not reach
    the terminal), except in ``markup_cols``, which hold our own markup."""
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=title, title_justify="left", header_style="bold")
    for col in columns:
        t.add_column(col)
    for row in rows:
        t.add_row(
            *[
                "" if v is None else str(v) if i in markup_cols else escape(clean(str(v)))
                for i, v in enumerate(row)
            ]
        )
    return t


def confirm_destructive(yes: bool, what: str) -> None:
    """Go on with --yes, or when a person at a terminal says so; refuse (exit 2) otherwise."""
    if yes:
        return
    if sys.stdin.isatty() and sys.stderr.isatty():
        if typer.confirm(f"{what} is destructive. Continue?", default=False, err=True):
            return
        raise typer.Exit(1)
    from bizosctl.errors import InvalidInput

    raise InvalidInput(
        f"{what} is destructive: pass --yes to confirm (or --dry-run to see the plan)"
    )
