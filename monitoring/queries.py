"""Query building blocks shared by the dashboards: selectors and rate expressions."""

from __future__ import annotations

from retinad.exporter.naming import Naming

I = 'instance=~"$instance"'  # noqa: E741 (the selector every query starts with)
EP = I + ', namespace=~"$namespace", <NAME>=~"$name"'
"""One endpoint, as the endpoint dashboard's variables select it."""
RATE = "[$__rate_interval]"

EP_BYTES_RULE = "instance_namespace_<NAME>_direction:<BASE_EP_BYTES>:rate1m"
EP_PKTS_RULE = "instance_namespace_<NAME>_direction:<BASE_EP_PKTS>:rate1m"
EP_FLAGS_RULE = "instance_namespace_<NAME>_flag_direction:<BASE_EP_FLAGS>:rate1m"
"""Recording rules (monitoring/rules.py): per-endpoint rates in either series shape."""


def rate_by(metric: str, sel: str, by: str) -> str:
    return f"sum by ({by}) (rate({metric}{{{sel}}}{RATE}))"


def rst_per_syn(flags: str, sel: str, by: str) -> str:
    """RST packets per SYN packet, from a flags counter."""
    rst = rate_by(flags, sel + ', flag="RST"', by)
    syn = rate_by(flags, sel + ', flag="SYN"', by)
    return f"{rst} / {syn}"


def local_rate(metric: str, window: str, by: str, naming: Naming) -> str:
    """``sum by (by) (rate(metric[window]))`` per local endpoint, for recording rules.

    In retina naming with remote context, the forward and flag series have Retina's
    source/destination shape instead of ``namespace``/``podname`` (exporter/naming.py,
    ``retina_pair_shape``): the local endpoint is the source of egress series and the
    destination of ingress ones. So in retina naming the rate is the per-endpoint series
    (``podname`` set: remote context off) or, failing that, each pair series with its
    local side's labels copied to ``namespace``/``podname``; ``by`` then sums either shape
    to the same per-endpoint result, and the dashboards reading the rule work with remote
    context on or off.
    """
    plain = f"rate({metric}[{window}])"
    if naming != "retina":
        return f"sum by ({by}) ({plain})"

    def as_local(side: str, direction: str) -> str:
        expr = f'rate({metric}{{direction="{direction}", {side}podname!=""}}[{window}])'
        for label in ("namespace", "podname"):
            expr = f'label_replace({expr}, "{label}", "$1", "{side}{label}", "(.*)")'
        return expr

    local = f'rate({metric}{{podname!=""}}[{window}])'
    return (
        f"sum by ({by}) ({local} or {as_local('source_', 'egress')} "
        f"or {as_local('destination_', 'ingress')})"
    )
