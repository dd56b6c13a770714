"""CPU cost of short commands against ``bizosctl --help`` (issue 12, item 14).

    python benchmarks/cli_startup.py [--repeat 7] [--home DIR] [--keep]

Without ``--home`` it runs ``quickstart`` in a throw-away home first. Every command runs
``--repeat`` times in a child process after one warm-up run; the figure is the child's CPU time
(user + system, from ``wait4``), so the servers' own work and the machine's other load count
less than in wall time. It prints the median per command and its ratio to ``--help``; the
target is at most 2x.

Bytecode: ``PYTHONDONTWRITEBYTECODE`` is removed from the children's environment (an installed
package has its ``.pyc`` files; recompiling bizosctl on every call is not what an operator
pays). ``--no-bytecode`` keeps the variable, to see the cost without them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import make_home  # noqa: E402

COMMANDS: list[tuple[str, list[str]]] = [
    ("--help", ["--help"]),
    ("tenant list --json", ["tenant", "list", "--json"]),
    ("tenant show acme --json", ["tenant", "show", "acme", "--json"]),
    ("schema status --json", ["schema", "status", "--json"]),
    ("(floor: library imports)", ["floor"]),
]
TARGET = 2.0
# What any command that reads the catalog must import (typer's parser pulls pydantic), as a
# floor for the figures above it: no change inside bizosctl goes below this. The three read
# commands use plain psycopg (bizosctl.catalog.reads): SQLAlchemy is not part of it.
FLOOR = "import typer, rich.console, pydantic, pydantic_settings, psycopg"


def cpu_of(args: list[str], env: dict[str, str]) -> float:
    """Run ``python -m bizosctl args`` (``-c FLOOR`` for the floor) and return its CPU
    seconds (user + system)."""
    argv = (
        [sys.executable, "-c", FLOOR]
        if args == ["floor"]
        else [sys.executable, "-m", "bizosctl", *args]
    )
    proc = subprocess.Popen(
        argv,
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"bizosctl {' '.join(args)} exited {proc.returncode}: {err.strip()}")
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--home", type=Path, help="use this existing home (quickstart already run)")
    ap.add_argument("--keep", action="store_true", help="keep the throw-away home")
    ap.add_argument("--no-bytecode", action="store_true", help="keep PYTHONDONTWRITEBYTECODE")
    opts = ap.parse_args()

    if opts.home:
        home = opts.home
        os.environ["BIZOS_HOME"] = str(home)
        created = False
    else:
        home = make_home(fast=True)
        created = True
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    if not opts.no_bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    try:
        if created:
            print(f"quickstart in {home} ...", file=sys.stderr)
            subprocess.run(
                [sys.executable, "-m", "bizosctl", "quickstart"],
                env=env,
                cwd=ROOT,
                check=True,
                capture_output=True,
            )
        for _name, args in COMMANDS:  # warm-up: page cache, .pyc files, running servers
            cpu_of(args, env)
        samples: dict[str, list[float]] = {name: [] for name, _ in COMMANDS}
        for _ in range(opts.repeat):  # interleaved: a burst of load hits every command alike
            for name, args in COMMANDS:
                samples[name].append(cpu_of(args, env))
        base = statistics.median(samples["--help"])
        print(f"CPU seconds per call, median of {opts.repeat} (min-max), ratio to --help")
        worst = 0.0
        for name, _ in COMMANDS:
            med = statistics.median(samples[name])
            ratio = med / base
            if name not in ("--help", "(floor: library imports)"):
                worst = max(worst, ratio)
            lo, hi = min(samples[name]), max(samples[name])
            print(f"  {name:<26} {med:6.3f} s  ({lo:.3f}-{hi:.3f})  {ratio:4.2f}x")
        verdict = "within" if worst <= TARGET else "above"
        print(f"worst ratio {worst:.2f}x: {verdict} the {TARGET:.0f}x target")
    finally:
        if created and not opts.keep:
            subprocess.run(
                [sys.executable, "-m", "bizosctl", "down"], env=env, cwd=ROOT, capture_output=True
            )
            import shutil

            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
