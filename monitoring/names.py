"""Metric and label names in each naming, as tokens the dashboard and rule queries use.

Queries are written once with ``<TOKEN>`` placeholders (``<EP_BYTES>``, ``<NAME>``); each
naming fills them from retinad.exporter.naming, the only place retinad spells a name, so a
renamed metric changes the dashboards with it (and the e2e test sees a broken one).
"""

from __future__ import annotations

import re

from retinad.exporter import naming as n
from retinad.exporter.naming import MetricSpec, Naming

NAMINGS: tuple[Naming, ...] = ("prometheus", "retina")

_SPECS: dict[str, MetricSpec] = {
    "FWD_PKTS": n.FORWARD_PACKETS,
    "FWD_BYTES": n.FORWARD_BYTES,
    "TCP_FLAGS": n.TCP_FLAGS,
    "EP_PKTS": n.ENDPOINT_FORWARD_PACKETS,
    "EP_BYTES": n.ENDPOINT_FORWARD_BYTES,
    "EP_FLAGS": n.ENDPOINT_TCP_FLAGS,
    "RM_PKTS": n.REMOTE_FORWARD_PACKETS,
    "RM_BYTES": n.REMOTE_FORWARD_BYTES,
    "DROP_PKTS": n.DROP_PACKETS,
    "DROP_BYTES": n.DROP_BYTES,
    "EP_DROP_PKTS": n.ENDPOINT_DROP_PACKETS,
    "EP_DROP_BYTES": n.ENDPOINT_DROP_BYTES,
}

# Retina naming of latency target "apiserver" (issue 14: in milliseconds, as Retina's, no
# target label, both directions summed; other targets keep the retinad_ names in both
# namings). Spelled here until that branch's names land in retinad/; then import them.
RETINA_APISERVER_HANDSHAKE = "networkobservability_adv_node_apiserver_tcp_handshake_latency"
RETINA_APISERVER_REQUEST = "networkobservability_adv_node_apiserver_latency"
RETINA_APISERVER_NO_RESPONSE = "networkobservability_adv_node_apiserver_no_response"
"""A gauge of cumulative counts, label ``no_response`` = the stage."""

_TOKEN = re.compile(r"<([A-Z_]+)>")


def exposed_name(spec: MetricSpec, naming: Naming) -> str:
    """The name on /metrics: prometheus naming's counters get ``_total`` on exposition."""
    return spec.prometheus + "_total" if naming == "prometheus" else spec.retina


def tokens(naming: Naming) -> dict[str, str]:
    """Every placeholder's value in ``naming``."""
    out = {key: exposed_name(spec, naming) for key, spec in _SPECS.items()}
    # Without _total, for recording rule names (level:metric:operations).
    out |= {f"BASE_{key}": spec.name(naming) for key, spec in _SPECS.items()}
    local = n.ENDPOINT_LABELS[naming]
    remote = n.REMOTE_PREFIX[naming]
    out["NAME"] = local[1]  # "name" or Retina's "podname"
    out["RNS"] = remote + local[0]
    out["RNAME"] = remote + local[1]
    out["RKIND"] = remote + local[2]
    return out


def fill(text: str, naming: Naming) -> str:
    """``text`` with every ``<TOKEN>`` replaced; an unknown token is a bug, not a blank."""
    values = tokens(naming)

    def one(m: re.Match[str]) -> str:
        if m.group(1) not in values:
            raise KeyError(f"unknown token <{m.group(1)}> in {text!r}")
        return values[m.group(1)]

    return _TOKEN.sub(one, text)
