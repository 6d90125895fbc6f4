"""Query building blocks shared by the dashboards: selectors and rate expressions."""

from __future__ import annotations

I = 'instance=~"$instance"'  # noqa: E741 (the selector every query starts with)
EP = I + ', namespace=~"$namespace", <NAME>=~"$name"'
"""One endpoint, as the endpoint dashboard's variables select it."""
RATE = "[$__rate_interval]"


def rate_by(metric: str, sel: str, by: str) -> str:
    return f"sum by ({by}) (rate({metric}{{{sel}}}{RATE}))"


def rst_per_syn(flags: str, sel: str, by: str) -> str:
    """RST packets per SYN packet, from a flags counter."""
    rst = rate_by(flags, sel + ', flag="RST"', by)
    syn = rate_by(flags, sel + ', flag="SYN"', by)
    return f"{rst} / {syn}"
