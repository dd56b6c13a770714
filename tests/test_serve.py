"""`bizosctl serve`: the settings it checks, and a real server process that stops on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from apiserver import free_port


def test_dry_run_prints_the_plan(cli):
    r = cli("serve", "--port", "9000", "--workers", "2", "--dry-run", "--json")
    assert r.exit_code == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["url"] == "http://127.0.0.1:9000" and plan["workers"] == 2
    assert plan["rate_limit_store"] == "memory"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "0"], "--port 0: between 1 and 65535"),
        (["--port", "70000"], "--port 70000: between 1 and 65535"),
        (["--host", "localhost;rm"], "give an IP address"),
        (["--workers", "0"], "--workers 0: between 1 and 64"),
    ],
)
def test_bad_options_exit_2(cli, args, message):
    r = cli("serve", *args, "--dry-run")
    assert r.exit_code == 2 and message in r.stderr, r.stderr


def test_production_refuses_an_open_address_without_tls_and_a_star_origin(cli):
    env = {"BIZOS_ENV": "production", "BIZOS_CORS_ORIGINS": '["https://app.example"]'}
    r = cli("serve", "--host", "0.0.0.0", "--dry-run", env=env)
    assert r.exit_code == 2 and "needs TLS" in r.stderr, r.stderr
    r = cli("serve", "--dry-run", env={"BIZOS_ENV": "production"})
    assert r.exit_code == 2 and "BIZOS_CORS_ORIGINS" in r.stderr, r.stderr


def test_serve_answers_and_stops_on_sigterm(fleet):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bizosctl", "serve", "--port", str(port)],
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
                break
            except httpx.HTTPError:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.1)
        assert r.status_code == 200 and r.json()["status"] == "ready"
        assert httpx.get(f"http://127.0.0.1:{port}/.well-known/jwks.json").json()["keys"]
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"serving http://127.0.0.1:{port}" in err
