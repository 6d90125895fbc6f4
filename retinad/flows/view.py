"""Which records `retinad flows` shows, and how one looks on a line."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

Record = dict[str, Any]


@dataclass(frozen=True)
class Filter:
    """Every given criterion must hold; a criterion naming an endpoint or address holds
    when either end matches (like ``hubble observe --pod``)."""

    names: tuple[str, ...] = ()
    """Glob patterns of endpoint names, or namespace/name."""
    ips: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    protocol: str = ""
    direction: str = ""
    interface: str = ""

    def __call__(self, r: Record) -> bool:
        if self.protocol and r.get("protocol", "").upper() != self.protocol.upper():
            return False
        if self.direction and r.get("direction") != self.direction:
            return False
        if self.interface and not fnmatch.fnmatchcase(
            (r.get("interface") or {}).get("name", ""), self.interface
        ):
            return False
        if self.ips and r.get("src_ip") not in self.ips and r.get("dst_ip") not in self.ips:
            return False
        if (
            self.ports
            and r.get("src_port") not in self.ports
            and r.get("dst_port") not in self.ports
        ):
            return False
        if not self.names:
            return True
        return any(_named(r.get(end), p) for end in ("src", "dst") for p in self.names)


def _named(ep: dict[str, str] | None, pattern: str) -> bool:
    if not ep:
        return False
    full = f"{ep.get('namespace', '')}/{ep.get('name', '')}"
    return fnmatch.fnmatchcase(ep.get("name", ""), pattern) or fnmatch.fnmatchcase(full, pattern)


def _end(r: Record, side: str) -> str:
    ep = r.get(side)
    addr = r.get(f"{side}_ip", "")
    where = f"[{addr}]" if ":" in addr else addr
    where += f":{r.get(f'{side}_port', 0)}"
    if not ep:
        return where
    name = f"{ep['namespace']}/{ep['name']}" if ep.get("namespace") else ep["name"]
    return f"{name} ({where})"


def line(r: Record) -> str:
    """One record as a line: time, interface, direction, protocol, ends, flags, counts."""
    flags = ",".join(r.get("tcp_flags") or [])
    iface = (r.get("interface") or {}).get("name") or str((r.get("interface") or {}).get("ifindex"))
    return (
        f"{r.get('time', '')} {iface} {r.get('direction', '')} {r.get('protocol', '')} "
        f"{_end(r, 'src')} -> {_end(r, 'dst')}"
        + (f" [{flags}]" if flags else "")
        + f" {r.get('packets', 0)} pkt {r.get('bytes', 0)} B {r.get('reason', '')}"
    )
