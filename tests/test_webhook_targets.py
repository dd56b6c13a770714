"""Webhook targets outside development: no metadata service, no private or loopback address in
any spelling, checked again at delivery on the address actually connected to."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from bizosctl.catalog.control import Control
from bizosctl.errors import InvalidInput
from bizosctl.notify.delivery import deliver
from bizosctl.notify.webhooks import verify

PROD = {"BIZOS_ENV": "production"}
BODY = b'{"type": "invoice.paid"}'


def add(cli, slug, url, env=None):
    return cli(
        "webhook", "add", "--tenant", slug, "--url", url, "--events", "invoice.paid", "--json",
        env=env,
    )  # fmt: skip


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "https://169.254.169.254/latest/meta-data/",
        "https://10.0.0.5/hooks",
        "https://192.168.1.1/hooks",
        "https://100.64.0.1/hooks",
        "https://[::1]/hooks",
        "https://[fe80::1]/hooks",
        "https://[fd00::5]/hooks",
        "https://2130706433/hooks",
        "https://0x7f.1/hooks",
        "https://0177.0.0.1/hooks",
        "https://127.1/hooks",
        "https://0.0.0.0/hooks",
        "https://[::ffff:127.0.0.1]/hooks",
        "https://[::ffff:a9fe:a9fe]/hooks",
        "https://[64:ff9b::a9fe:a9fe]/hooks",
        "https://localhost/hooks",
        "http://localhost:8999/hooks",
    ],
)
def test_non_public_webhook_target_refused_in_production(cli, make_tenant, url):
    slug = make_tenant(tier="shared")
    r = add(cli, slug, url, env=PROD)
    assert r.exit_code == 2, r.stdout
    assert ("non-public address" in r.stderr) or ("must use https" in r.stderr), r.stderr


def test_public_target_accepted_in_production(cli, make_tenant):
    slug = make_tenant(tier="shared")
    r = add(cli, slug, "https://93.184.215.14/hooks", env=PROD)
    assert r.exit_code == 0, r.stderr


def test_allow_list_admits_a_lab_host_in_production(cli, make_tenant):
    slug = make_tenant(tier="shared")
    env = {**PROD, "BIZOS_WEBHOOK_ALLOW_HOSTS": "127.0.0.1, lab.internal"}
    assert add(cli, slug, "http://127.0.0.1:8999/hooks", env=env).exit_code == 0
    assert add(cli, slug, "https://10.0.0.5/hooks", env=env).exit_code == 2


class _Receiver:
    """A real HTTP receiver on loopback, recording each request."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                outer.requests.append((dict(self.headers.items()), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = _Receiver()
    yield r
    r.close()


def test_delivery_in_development_reaches_the_loopback_receiver_signed(
    cli, ctl, make_tenant, receiver
):
    slug = make_tenant(tier="shared")
    r = add(cli, slug, f"http://localhost:{receiver.port}/hooks?x=1")
    doc = json.loads(r.stdout)
    result = deliver(ctl, doc["endpoint"]["id"], payload=BODY)
    assert result.status == 204
    assert result.address == "127.0.0.1"  # where it connected: the address it checked
    (headers, body), = receiver.requests  # fmt: skip
    assert body == BODY
    assert headers["Host"] == f"localhost:{receiver.port}"
    verify(doc["secret"], {k.lower(): v for k, v in headers.items()}, body)


def test_delivery_checks_the_target_again_in_production(cli, ctl, make_tenant, receiver):
    slug = make_tenant(tier="shared")
    doc = json.loads(add(cli, slug, f"http://localhost:{receiver.port}/hooks").stdout)
    prod = Control(ctl.settings.model_copy(update={"env": "production"}))
    with pytest.raises(InvalidInput, match="non-public address"):
        deliver(prod, doc["endpoint"]["id"], payload=BODY)
    assert receiver.requests == []
    lab = Control(
        ctl.settings.model_copy(update={"env": "production", "webhook_allow_hosts": "localhost"})
    )
    assert deliver(lab, doc["endpoint"]["id"], payload=BODY).status == 204
