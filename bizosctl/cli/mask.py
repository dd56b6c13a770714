"""``bizosctl mask``: the PII masking the model gate applies, on stdin."""

from __future__ import annotations

import sys

import typer

from bizosctl.cli.output import JsonOpt, handle_errors, print_json


@handle_errors
def mask(
    tenant: str | None = typer.Option(
        None,
        "--tenant",
        metavar="SLUG",
        help="Also mask this tenant's members' and customers' names (its own dictionary).",
        show_default=False,
    ),
    json_out: bool = JsonOpt,
) -> None:
    """Mask personal data in the text on stdin: e-mails, phones, cards, IBANs, NIK, NPWP, IP
    addresses and people's names become <KIND_n> placeholders, as before a model call.

    With --json: "text" (masked) and "entities" (kind, start, end in the input), no values.

    Example: echo 'Pak Budi, 0812-3456-7890' | bizosctl mask --tenant acme --json
    """
    from bizosctl.errors import InvalidInput
    from bizosctl.privacy.masking import mask as mask_text

    if sys.stdin is None or sys.stdin.isatty():
        raise InvalidInput("no text on stdin: pipe it in, e.g. bizosctl mask < message.txt")
    raw = sys.stdin.buffer.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"stdin is not UTF-8 text (byte {exc.start})") from exc
    if not text.strip():
        raise InvalidInput("no text on stdin: pipe it in, e.g. bizosctl mask < message.txt")
    names: list[str] = []
    if tenant is not None:
        from bizosctl.catalog.control import get_control
        from bizosctl.privacy.dictionary import tenant_names

        names = tenant_names(get_control(), tenant)
    masked = mask_text(text, names=names)
    if json_out:
        print_json(
            {
                "text": masked.text,
                "entities": [
                    {"kind": s.kind, "start": s.start, "end": s.end} for s in masked.entities
                ],
            }
        )
        return
    sys.stdout.write(masked.text)
    sys.stdout.flush()


def register(app: typer.Typer) -> None:
    app.command("mask")(mask)
