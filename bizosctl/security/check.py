"""``secrets check``: the deployment checklist (seed's JWT_SECRET ≥ 32 chars, PII key, Stripe
keys and webhook secret, HTTPS, CORS, environment) as checks that never print a secret."""

from __future__ import annotations

import re

from bizosctl.catalog.control import Control
from bizosctl.config import secret_source
from bizosctl.doctor import Check
from bizosctl.errors import BizosError
from bizosctl.security.masterkey import key_file_mode, load_master_key

RATE_RE = re.compile(r"[1-9][0-9]*/([1-9][0-9]*)?(second|minute|hour|day)s?")


def _mode(key: str | None, live: str, test: str) -> str | None:
    if not key:
        return None
    if key.startswith(live):
        return "live"
    if key.startswith(test):
        return "test"
    return "unknown"


def row_binding_check(ctl: Control) -> Check:
    """Fails while the primary PII key does not bind values to their row (a key made before
    catalog revision 0005): a ciphertext copied to another row of its column decrypts there."""
    try:
        dk = ctl.keyring.primary("pii")
    except BizosError as exc:
        return Check(name="PII row binding", ok=False, detail=exc.message)
    if dk.binds_rows:
        return Check(
            name="PII row binding", ok=True, detail=f"v{dk.version} binds each value to its row"
        )
    return Check(
        name="PII row binding",
        ok=False,
        detail=f"v{dk.version} binds values to tenant, table and column only (a value copied to "
        "another row decrypts there): run `bizosctl secrets rotate pii`",
    )


def run_checks(ctl: Control) -> list[Check]:
    s = ctl.settings
    out: list[Check] = []

    def add(name: str, ok: bool, detail: str) -> None:
        out.append(Check(name=name, ok=ok, detail=detail))

    # Each secret's detail names where it really comes from (variable, file, key file, KMS).
    if s.kms_key_id:
        add("master key", True, f"AWS KMS key {s.kms_key_id}")
    elif s.master_key is not None:
        add("master key", True, f"from {secret_source('master_key') or 'BIZOS_MASTER_KEY'}")
    else:
        problem: str | None = None
        try:
            load_master_key(s)
        except BizosError as exc:
            problem = exc.message
        mode = key_file_mode(s.key_file)
        add(
            "master key",
            problem is None,
            f"from key file {s.key_file} (mode {mode:04o})" if problem is None else problem,
        )
    try:
        ring = ctl.keyring
        for purpose, label in (("jwt", "JWT signing key"), ("pii", "PII key")):
            try:
                dk = ring.primary(purpose)
                bits = len(dk.key) * 8
                add(label, bits >= 256, f"v{dk.version}, {bits} bits")
            except BizosError as exc:
                add(label, False, exc.message)
        out.append(row_binding_check(ctl))
    except BizosError as exc:
        add("keyring", False, exc.message)

    sk = s.stripe_secret_key.get_secret_value() if s.stripe_secret_key else None
    pk = s.stripe_publishable_key
    wh = s.stripe_webhook_secret.get_secret_value() if s.stripe_webhook_secret else None
    sk_mode = _mode(sk, "sk_live_", "sk_test_") or _mode(sk, "rk_live_", "rk_test_")
    pk_mode = _mode(pk, "pk_live_", "pk_test_")
    add(
        "stripe secret key",
        sk_mode in ("live", "test"),
        "missing (BIZOS_STRIPE_SECRET_KEY)"
        if sk is None
        else f"{sk_mode} key, from {secret_source('stripe_secret_key')}"
        if sk_mode != "unknown"
        else "not a Stripe secret key (sk_live_/sk_test_)",
    )
    add(
        "stripe publishable key",
        pk_mode in ("live", "test"),
        "missing (BIZOS_STRIPE_PUBLISHABLE_KEY)"
        if pk is None
        else f"{pk_mode} key"
        if pk_mode != "unknown"
        else "not a publishable key (pk_live_/pk_test_)",
    )
    add(
        "stripe webhook secret",
        bool(wh and wh.startswith("whsec_")),
        "missing (BIZOS_STRIPE_WEBHOOK_SECRET)"
        if not wh
        else f"whsec_ secret, from {secret_source('stripe_webhook_secret')}"
        if wh.startswith("whsec_")
        else "not a webhook secret (whsec_...)",
    )
    if sk_mode in ("live", "test") and pk_mode in ("live", "test"):
        add(
            "stripe mode",
            sk_mode == pk_mode,
            f"secret key is {sk_mode}, publishable key is {pk_mode}",
        )
    production = s.env == "production"
    if production:
        if "test" in (sk_mode, pk_mode):
            add("stripe live in production", False, "test keys in production")
        tls = bool(
            s.tls_cert_file
            and s.tls_key_file
            and s.tls_cert_file.exists()
            and s.tls_key_file.exists()
        ) or bool(s.public_url and s.public_url.startswith("https://"))
        add(
            "TLS",
            tls,
            "HTTPS configured"
            if tls
            else "production needs BIZOS_TLS_CERT_FILE and BIZOS_TLS_KEY_FILE, "
            "or an https:// BIZOS_PUBLIC_URL",
        )
        cors_ok = bool(s.cors_origins) and "*" not in s.cors_origins
        add(
            "CORS",
            cors_ok,
            ", ".join(s.cors_origins)
            if cors_ok
            else "production needs an explicit BIZOS_CORS_ORIGINS list, not '*'",
        )
    rate_ok = bool(s.rate_limit and RATE_RE.fullmatch(s.rate_limit))
    if not s.rate_limit:
        add("rate limit", False, "set BIZOS_RATE_LIMIT, e.g. 100/minute")
    else:
        detail = s.rate_limit if rate_ok else f"{s.rate_limit!r} is not N/second|minute|hour|day"
        add("rate limit", rate_ok, detail)
    return out
