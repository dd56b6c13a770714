"""Where a webhook may be delivered: public addresses only, outside development.

A tenant chooses its webhook URL, and bizosctl then sends requests there from inside the
platform's network: a URL aimed at ``169.254.169.254`` (cloud metadata), ``10.x``, ``[::1]``
or a database port would turn deliveries into requests against the platform itself (SSRF).
Outside development (``BIZOS_ENV`` other than ``development``) the host must be a public
address, or a name whose every address is public, unless it is listed in
``BIZOS_WEBHOOK_ALLOW_HOSTS`` (labs, tests). Every spelling the C resolver takes counts:
``2130706433``, ``0x7f.1``, ``0177.0.0.1``, IPv4-mapped and NAT64/6to4 IPv6 forms.

A name is checked when the endpoint is added and again at every delivery, on the addresses
it resolves to then; the delivery connects to the very address it checked (pinned: no second
lookup a rebinding DNS server could answer differently) and follows no redirect.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import TYPE_CHECKING

from bizosctl.errors import InvalidInput

if TYPE_CHECKING:
    from bizosctl.config import Settings

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NUMERIC_V4 = re.compile(r"[0-9a-fA-FxX.]+")


def restricted(settings: Settings) -> bool:
    """True when webhook targets must be public (every environment but development)."""
    return settings.env != "development"


def allowed_hosts(settings: Settings) -> frozenset[str]:
    raw = settings.webhook_allow_hosts or ""
    return frozenset(h.strip().lower().strip("[]") for h in raw.split(",") if h.strip())


def parse_ip(host: str) -> IP | None:
    """The address ``host`` spells, in any form the resolver accepts; None for a name."""
    host = host.strip("[]").split("%", 1)[0]  # an IPv6 zone id does not change the address
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _NUMERIC_V4.fullmatch(host) and any(c.isdigit() for c in host):
        try:  # inet_aton: 2130706433, 0x7f.1, 0177.0.0.1, 127.1 (what getaddrinfo accepts too)
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def is_public(ip: IP) -> bool:
    """Globally routable unicast, also after unwrapping an IPv4 address carried in IPv6."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner: ipaddress.IPv4Address | None = ip.ipv4_mapped or ip.sixtofour
        if inner is None and ip.teredo is not None:
            inner = ip.teredo[1]
        if inner is None and ip in _NAT64:
            inner = ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
        if inner is not None:
            return is_public(inner)
    return ip.is_global and not ip.is_multicast


def resolve(host: str, port: int) -> list[IP]:
    """Every address ``host`` resolves to (one lookup); empty when it does not resolve."""
    literal = parse_ip(host)
    if literal is not None:
        return [literal]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return []
    out: list[IP] = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if ip not in out:
            out.append(ip)
    return out


def _refuse(host: str, why: str) -> InvalidInput:
    return InvalidInput(
        f"webhook host {host!r} {why}: outside development webhooks go to public addresses "
        "only (list a lab host in BIZOS_WEBHOOK_ALLOW_HOSTS)"
    )


def check_host(host: str, port: int, settings: Settings) -> None:
    """When a URL is added: refuse a private, loopback, link-local or otherwise non-public
    host (a literal in any spelling, or a name resolving to one). A name that does not
    resolve yet is accepted; every delivery checks again."""
    if not restricted(settings) or host.lower() in allowed_hosts(settings):
        return
    literal = parse_ip(host)
    if literal is not None:
        if not is_public(literal):
            raise _refuse(host, f"is a non-public address ({literal})")
        return
    bad = [ip for ip in resolve(host, port) if not is_public(ip)]
    if bad:
        raise _refuse(host, f"resolves to a non-public address ({bad[0]})")


def pinned_address(host: str, port: int, settings: Settings) -> IP:
    """The address a delivery connects to: resolved once, every answer checked."""
    addresses = resolve(host, port)
    if not addresses:
        raise InvalidInput(f"webhook host {host!r} does not resolve")
    if restricted(settings) and host.lower() not in allowed_hosts(settings):
        bad = [ip for ip in addresses if not is_public(ip)]
        if bad:
            raise _refuse(host, f"resolves to a non-public address ({bad[0]})")
    return addresses[0]
