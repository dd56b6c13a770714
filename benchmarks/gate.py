"""The LLM gate's overhead over a direct client call to the same loopback model.

Run as ``python benchmarks/gate.py [--calls 500] [--prompt-bytes 2048] [--json]``.

A throw-away home with one embedded server and one schema-tier tenant with 50 members and 50
customers (their names are the masking dictionary). The model is a Gemini-like server in a
separate process on 127.0.0.1 (``POST /v1beta/models/{m}:generateContent``, a fixed answer with
``usageMetadata``). Both sides use google-genai with the same base URL and timeout, one call at
a time, in alternating blocks of 50 so that drift in the machine's load hits both alike:

- **direct**: ``client.models.generate_content`` with the raw prompt;
- **gate**: ``Gate.ask`` with the same prompt: tenant terms and route (kept for a few seconds),
  masking of the ~2 KB prompt (e-mails, phones, an NIK, names; the names kept compiled), the
  breaker, the budget reservation and ledger row in the tenant's database (one statement in
  one round trip), the call, and restoring the answer. The settlement (a second statement) is
  off the caller's path: it waits in the gate's writer and is sent with the next call's
  reservation, in the same transaction and round trip (the writer thread writes what no
  reservation carries).

Prints p50 and p99 of both and the difference (target: p50 overhead <= 3 ms), the overhead the
gate records in its ledger (``overhead_ms``: its own time, without the model's), the CPU time
of this process per call (robust to a loaded machine), and the p50 of each step alone. A
measurement, not a test: nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import MODEL_SERVER, cleanup, make_home

ANSWER = "Noted: <PERSON_1> will call <PHONE_1> tomorrow about the overdue invoice."

FIRST = ["Budi", "Siti", "Agus", "Dewi", "Rina", "Hendra", "Yuni", "Eko", "Wulan", "Joko"]
LAST = ["Santoso", "Rahayu", "Wijaya", "Lestari", "Hidayat"]


def prompt_of(size: int) -> str:
    """A business text of about ``size`` bytes with PII every few sentences."""
    parts = [
        "Weekly summary for the finance team. Revenue grew 4.2 % against last week, driven by "
        "the wholesale channel; invoice INV-2026-0042 (Rp 12.500.000) is still open. ",
        "Please ask Budi Santoso (budi.santoso@tokomaju.co.id, 0812-3456-7890) to confirm "
        "the delivery for order SO-88123 before Friday. ",
        "Customer Siti Rahayu wrote from siti.r@example.com about a duplicate charge; her "
        "NIK 3171234567890003 was sent by mistake and must not be stored. ",
        "Stock of SKU BRG-001-XL is low in the Bandung warehouse; the supplier quoted a lead "
        "time of 9 days and asked for payment to +62 21 5550 1234. ",
    ]
    out, i = "", 0
    while len(out.encode()) < size:
        out += parts[i % len(parts)]
        i += 1
    return out


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--prompt-bytes", type=int, default=2048)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    log = (lambda m: print(m, file=sys.stderr)) if args.json else print
    home = make_home(fast=True)
    server = subprocess.Popen(
        [sys.executable, "-c", MODEL_SERVER, ANSWER, "0", "600", "20"],
        stdout=subprocess.PIPE,
        text=True,
    )
    ctl = None
    try:
        assert server.stdout is not None
        url = f"http://127.0.0.1:{server.stdout.readline().strip()}"
        from bizosctl.catalog.control import get_control
        from bizosctl.tenancy.regions import init_home

        ctl = get_control()
        init_home(ctl)
        result = run(ctl, url, args.calls, prompt_of(args.prompt_bytes), log)
    finally:
        server.kill()
        server.wait()
        cleanup(ctl, home, log)
    if args.json:
        print(json.dumps(result, indent=2))


def run(ctl: Any, url: str, calls: int, prompt: str, log: Any) -> dict[str, Any]:
    import uuid

    from google import genai
    from google.genai import types
    from sqlalchemy import insert

    from bizosctl.ai.gate import Gate
    from bizosctl.config import Settings
    from bizosctl.security.fields import blind_index, encrypt
    from bizosctl.tenancy.provision import create_tenant
    from bizosctl.tenancy.router import tenant_session
    from tenant_schema.models import Customer, Member

    create_tenant(ctl, slug="bench", name="Bench", tier="schema", region="global")
    tid = ctl.route("bench").tenant_id
    ring = ctl.keyring
    with tenant_session(ctl, "bench", actor="bench") as s:
        for i in range(50):
            mid = uuid.uuid4()
            name = f"{FIRST[i % 10]} {LAST[i // 10]}"
            email = f"m{i}@bench.example"
            s.execute(insert(Member).values(
                tenant_id=tid, id=mid,
                email_enc=encrypt(ring, email, tenant_id=tid, table="members", column="email",
                                  row=mid),
                email_bidx=blind_index(ring, email),
                name_enc=encrypt(ring, name, tenant_id=tid, table="members", column="name",
                                 row=mid),
            ))  # fmt: skip
            s.execute(insert(Customer).values(tenant_id=tid, name=f"PT {LAST[i % 5]} {i}"))
    settings = Settings(ai_provider="gemini", gemini_api_key="bench", gemini_base_url=url)
    gate = Gate(ctl, settings=settings)
    client = genai.Client(
        api_key="bench",
        http_options=types.HttpOptions(
            base_url=url, api_version="v1beta", timeout=int(settings.ai_timeout * 1000)
        ),
    )
    config = types.GenerateContentConfig(
        max_output_tokens=settings.ai_max_output_tokens, temperature=0.2
    )

    def direct() -> None:
        client.models.generate_content(model=settings.gemini_model, contents=prompt, config=config)

    recorded: list[float] = []

    def through_gate() -> None:
        recorded.append(gate.ask("bench", feature="bench", prompt=prompt).overhead_ms)

    for _ in range(20):  # warm up both: connections, caches, the names dictionary
        direct()
        through_gate()
    recorded.clear()
    times: dict[str, list[float]] = {"direct": [], "gate": []}
    cpu: dict[str, float] = {"direct": 0.0, "gate": 0.0}
    block = 50
    done = 0
    while done < calls:
        n = min(block, calls - done)
        for name, fn in (("direct", direct), ("gate", through_gate)):
            c0 = time.process_time()
            for _ in range(n):
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1000)
            cpu[name] += time.process_time() - c0
        done += n
    breakdown = phases(ctl, gate, prompt)
    gate.close()
    client.close()
    stats = {
        name: {"p50_ms": round(pct(v, 50), 3), "p99_ms": round(pct(v, 99), 3),
               "mean_ms": round(statistics.fmean(v), 3)}
        for name, v in times.items()
    }  # fmt: skip
    result = {
        "calls": calls,
        "prompt_bytes": len(prompt.encode()),
        **stats,
        "overhead_p50_ms": round(stats["gate"]["p50_ms"] - stats["direct"]["p50_ms"], 3),
        "overhead_p99_ms": round(stats["gate"]["p99_ms"] - stats["direct"]["p99_ms"], 3),
        "recorded_overhead_p50_ms": round(pct(recorded, 50), 3),
        "recorded_overhead_p99_ms": round(pct(recorded, 99), 3),
        "target_p50_ms": 3.0,
        "phases_p50_ms": breakdown,
        # CPU of this process only (not PostgreSQL's, not the model server's): what a loaded
        # machine's wall clock does not blur
        "cpu_per_call_ms": {k: round(v * 1000 / calls, 3) for k, v in cpu.items()},
    }
    d, g = stats["direct"], stats["gate"]
    log(f"direct client: p50 {d['p50_ms']:.2f} ms, p99 {d['p99_ms']:.2f} ms")
    log(f"through gate:  p50 {g['p50_ms']:.2f} ms, p99 {g['p99_ms']:.2f} ms")
    log(
        f"gate overhead: p50 {result['overhead_p50_ms']:.2f} ms, p99 "
        f"{result['overhead_p99_ms']:.2f} ms (target p50 <= 3 ms); recorded in the ledger: "
        f"p50 {result['recorded_overhead_p50_ms']:.2f} ms, "
        f"p99 {result['recorded_overhead_p99_ms']:.2f} ms"
    )
    c = result["cpu_per_call_ms"]
    log(f"CPU of this process per call: direct {c['direct']:.2f} ms, gate {c['gate']:.2f} ms")
    log("phases, p50 ms: " + ", ".join(f"{k} {v:.2f}" for k, v in breakdown.items()))
    return result


def phases(ctl: Any, gate: Any, prompt: str, n: int = 200) -> dict[str, float]:
    """The gate's steps one by one (p50 of ``n`` each): where its overhead goes."""
    from decimal import Decimal

    from bizosctl.ai import ledger
    from bizosctl.ai.providers import Prompt
    from bizosctl.privacy.masking import mask

    names = gate.tenant_names("bench")
    plan = gate.tenant_terms("bench")
    run = gate._runner(gate.tenant_route("bench"), "bench")
    held: list[Any] = []

    def reserve() -> None:
        held.append(ledger.reserve(run, plan=plan, amount=Decimal("0.000001"), member=None,
                                   feature="bench", provider="gemini", model="m",
                                   entities={}))  # fmt: skip

    def settle() -> None:
        ledger.settle(run, tenant_id=plan.tenant_id, reservation=held.pop(),
                      outcome=ledger.Outcome(provider="gemini", model="m"))  # fmt: skip

    out = Prompt(text=mask(prompt, names=names).text)
    steps = {
        "mask": lambda: mask(prompt, names=names),
        "route lookup (kept 5 s)": lambda: ctl.route("bench"),
        "reserve txn": reserve,
        "settle txn (background)": settle,
        "breaker": lambda: (gate.breaker.allow(), gate.breaker.success()),
        "provider call": lambda: gate.provider.complete(out, timeout=10),
    }
    result = {}
    for name, fn in steps.items():
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
        result[name] = round(pct(times, 50), 3)
    return result


if __name__ == "__main__":
    main()
