"""Draw a Report as rich tables: boxed and coloured on a terminal, plain aligned text off one.

rich (a well-kept PyPI library) does the layout, width fitting and terminal handling that a
hand-written curses view would have to redo.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from retinad.top.rates import EndpointRow, Report, matches, sort_endpoints


@dataclass
class ViewState:
    sort: str = "bytes"
    filter: str = ""
    limit: int = 20
    typing: str | None = None
    """The filter being typed after '/', shown in the footer; None when not typing."""


def rate(v: float, unit: str = "") -> str:
    """1234567 -> "1.2M" (+ unit); 0 -> "0"."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:.1f}{suffix}{unit}"
    return f"{v:.1f}{unit}" if v else f"0{unit}"


def seconds(v: float) -> str:
    return "-" if math.isnan(v) else f"{v * 1000:.1f}ms"


def header(report: Report, url: str) -> Text:
    failing = [c for c, ok in sorted(report.collectors.items()) if not ok]
    t = Text()
    t.append("retinad top ", style="bold")
    t.append(f"{url}  naming={report.naming}  every {report.seconds:.1f}s\n")
    t.append(
        f"in {rate(report.bytes_in, 'B/s')} {rate(report.packets_in, 'pkt/s')}   "
        f"out {rate(report.bytes_out, 'B/s')} {rate(report.packets_out, 'pkt/s')}   "
        f"drops {rate(report.drops, 'pkt/s')}\n"
    )
    if failing:
        t.append(f"FAILING collectors: {', '.join(failing)}", style="bold red")
    else:
        t.append(f"collectors ok: {', '.join(sorted(report.collectors)) or '-'}")
    return t


def _filtered(rows: list[EndpointRow], state: ViewState) -> list[EndpointRow]:
    kept = [r for r in rows if matches(f"{r.key} {r.kind}", state.filter)]
    return sort_endpoints(kept, state.sort)[: state.limit]


def tables(report: Report, state: ViewState, *, plain: bool) -> list[Table]:
    style = box.SIMPLE_HEAD if not plain else None
    sort_mark = {state.sort: " *"} if state.sort != "name" else {}

    def col(name: str, key: str) -> str:
        return name + sort_mark.get(key, "")

    shown = _filtered(report.endpoints, state)
    ep = Table(title=None if plain else "Endpoints", box=style, expand=False, show_edge=False)
    # Names are what the operator looks for: numbers give way first on a narrow terminal.
    ep.add_column(
        col("ENDPOINT", "name"), no_wrap=True, min_width=max((len(r.key) for r in shown), default=8)
    )
    ep.add_column("KIND")
    for name, key in (
        ("IN B/s", "bytes_in"),
        ("OUT B/s", "bytes_out"),
        ("IN pkt/s", "packets_in"),
        ("OUT pkt/s", "packets_out"),
        ("DROPS/s", "drops"),
    ):
        ep.add_column(col(name, key), justify="right")
    for r in shown:
        ep.add_row(
            r.key,
            r.kind,
            rate(r.bytes_in),
            rate(r.bytes_out),
            rate(r.packets_in),
            rate(r.packets_out),
            rate(r.drops),
        )
    drops = Table(title=None if plain else "Drops", box=style, show_edge=False)
    for name in ("REASON", "DIRECTION", "ENDPOINT"):
        drops.add_column(name, no_wrap=True)
    drops.add_column("pkt/s", justify="right")
    drops.add_column("B/s", justify="right")
    rows = [d for d in report.drop_rows if matches(f"{d.endpoint} {d.reason}", state.filter)]
    for d in sorted(rows, key=lambda d: -d.packets)[: state.limit]:
        drops.add_row(d.reason, d.direction, d.endpoint, rate(d.packets), rate(d.bytes))
    lat = Table(title=None if plain else "Latency", box=style, show_edge=False)
    lat.add_column("TARGET")
    for name in ("HANDSHAKE p50", "p99", "REQUEST p50", "p99", "NO RESPONSE/s"):
        lat.add_column(name, justify="right")
    for t in report.latency:
        if matches(t.target, state.filter):
            lat.add_row(
                t.target,
                seconds(t.handshake_p50),
                seconds(t.handshake_p99),
                seconds(t.request_p50),
                seconds(t.request_p99),
                rate(t.no_response),
            )
    return [ep, drops, lat]


FOOTER = "keys: b bytes  i in  o out  p packets  d drops  n name  / filter  q quit"


def screen(report: Report, url: str, state: ViewState) -> RenderableType:
    """The whole live screen."""
    parts: list[RenderableType] = [header(report, url), *tables(report, state, plain=False)]
    if state.typing is not None:
        parts.append(Text(f"filter: {state.typing}_", style="reverse"))
    else:
        shown = f"  filter={state.filter!r}" if state.filter else ""
        parts.append(Text(f"{FOOTER}   sort={state.sort}{shown}", style="dim"))
    return Group(*parts)


def plain_text(report: Report, url: str, state: ViewState, width: int) -> str:
    """The same content as aligned text, no colour or boxes: for pipes, files and grep."""
    buf = io.StringIO()
    console = Console(
        file=buf, width=width, color_system=None, force_terminal=False, legacy_windows=False
    )
    console.print(header(report, url))
    for title, table in zip(
        ("ENDPOINTS", "DROPS", "LATENCY"), tables(report, state, plain=True), strict=True
    ):
        console.print(f"\n{title}")
        console.print(table)
    return buf.getvalue()
