"""The PROXY protocol (HAProxy's, v1 text and v2 binary), without I/O: a load balancer
in front of rrproxy prepends the real client's address to each connection."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107  # the longest v1 header the spec allows, CRLF included


class ProxyHeaderError(ValueError):
    """Not a valid PROXY header: the connection is closed."""


@dataclass(frozen=True)
class ProxyInfo:
    """The client as the balancer saw it; None for LOCAL/UNKNOWN (health checks)."""

    client: tuple[str, int] | None


def parse(data: bytes) -> tuple[ProxyInfo, int] | None:
    """(info, bytes consumed) once `data` holds a whole header, None if it needs
    more bytes; ProxyHeaderError if it is not a PROXY header."""
    if data[:12] == V2_SIGNATURE[: len(data[:12])] and data[:1] == b"\r":
        return _parse_v2(data)
    if data[:6] == b"PROXY "[: len(data[:6])]:
        return _parse_v1(data)
    raise ProxyHeaderError("connection does not start with a PROXY protocol header")


def _parse_v1(data: bytes) -> tuple[ProxyInfo, int] | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyHeaderError("PROXY v1 header too long")
        return None
    parts = data[:end].decode("ascii", "replace").split(" ")
    if parts[1:2] == ["UNKNOWN"]:
        return ProxyInfo(None), end + 2
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError(f"malformed PROXY v1 header {data[:end]!r}")
    try:
        source = ipaddress.ip_address(parts[2])
        port = int(parts[4])
    except ValueError:
        raise ProxyHeaderError(f"malformed PROXY v1 address in {data[:end]!r}") from None
    if not 0 <= port <= 65535:
        raise ProxyHeaderError("PROXY v1 port out of range")
    return ProxyInfo((str(source), port)), end + 2


def _parse_v2(data: bytes) -> tuple[ProxyInfo, int] | None:
    if len(data) < 16:
        return None
    if data[:12] != V2_SIGNATURE:
        raise ProxyHeaderError("bad PROXY v2 signature")
    version_command, family, length = data[12], data[13], struct.unpack("!H", data[14:16])[0]
    if version_command >> 4 != 2:
        raise ProxyHeaderError("unsupported PROXY protocol version")
    total = 16 + length
    if len(data) < total:
        return None
    command = version_command & 0x0F
    if command == 0:  # LOCAL: the balancer's own connection (health check)
        return ProxyInfo(None), total
    if command != 1:
        raise ProxyHeaderError("unknown PROXY v2 command")
    body = data[16:total]
    if family == 0x11 and length >= 12:  # TCP over IPv4
        return ProxyInfo(
            (str(ipaddress.IPv4Address(body[:4])), struct.unpack("!H", body[8:10])[0])
        ), total
    if family == 0x21 and length >= 36:  # TCP over IPv6
        return ProxyInfo(
            (str(ipaddress.IPv6Address(body[:16])), struct.unpack("!H", body[32:34])[0])
        ), total
    return ProxyInfo(None), total  # UNSPEC or unix sockets: keep the peer address


def trusted(address: str, allow: tuple[str, ...]) -> bool:
    """--forwarded-allow-ips: "*" or addresses / networks."""
    if "*" in allow:
        return True
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    for entry in allow:
        try:
            if ip in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


def forwarded_client(header: str, allow: tuple[str, ...]) -> str | None:
    """The client from X-Forwarded-For: the right-most address that is not one of our
    trusted proxies (everything left of it could be forged by the client)."""
    hops = [hop.strip() for hop in header.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not trusted(hop, allow):
            return hop
    return hops[0] if hops else None
