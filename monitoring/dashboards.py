"""The two dashboards: one node (what is this host's network doing, is retinad healthy) and
one endpoint (one container or pod: its traffic, drops and peers).

Queries use ``<TOKEN>`` placeholders (monitoring/names.py) so both namings come from one
definition; recording rules (monitoring/rules.py) carry the top-N panels, which would
otherwise aggregate every endpoint series on each refresh.
"""

from __future__ import annotations

from retinad.exporter.naming import Naming

from .endpoint_dashboard import endpoint_rows
from .grafana import Json, dashboard, query_variable
from .names import fill
from .node_dashboard import node_rows
from .queries import EP_BYTES_RULE, I


def _instance_variable() -> Json:
    return query_variable(
        "instance", "Instance", "label_values(retinad_build_info, instance)", multi=True
    )


def _fill_all(obj: object, naming: Naming) -> object:
    """Every string in the JSON tree with its tokens filled."""
    if isinstance(obj, str):
        return fill(obj, naming)
    if isinstance(obj, list):
        return [_fill_all(v, naming) for v in obj]
    if isinstance(obj, dict):
        return {k: _fill_all(v, naming) for k, v in obj.items()}
    return obj


def build(naming: Naming) -> dict[str, Json]:
    """File name -> dashboard JSON, for one naming."""
    suffix = "" if naming == "prometheus" else "-retina-naming"
    title_suffix = "" if naming == "prometheus" else " (Retina naming)"
    node = dashboard(
        f"retinad-node{suffix}",
        f"retinad / Node{title_suffix}",
        "One host's network as retinad counts it, and retinad's own health.",
        [_instance_variable()],
        node_rows(naming),
    )
    # Retina naming: from the recording rule, which has per-endpoint labels with remote
    # context on or off (queries.local_rate).
    endpoints = "<EP_BYTES>" if naming == "prometheus" else EP_BYTES_RULE
    endpoint_vars = [
        _instance_variable(),
        query_variable(
            "namespace",
            "Namespace",
            f"label_values({endpoints}{{{I}}}, namespace)",
            # "All" (.*) also matches the empty namespace of hosts and plain containers.
            multi=True,
        ),
        query_variable(
            "name",
            "Endpoint",
            f'label_values({endpoints}{{{I}, namespace=~"$namespace"}}, <NAME>)',
            multi=False,
        ),
    ]
    endpoint = dashboard(
        f"retinad-endpoint{suffix}",
        f"retinad / Endpoint{title_suffix}",
        "One container or pod: its traffic, its drops and its peers."
        if naming == "prometheus"
        else "One container or pod: its traffic and its drops (its peers, with remote "
        "context on: Retina's pod-level dashboard).",
        endpoint_vars,
        endpoint_rows(naming),
    )
    out = {f"retinad-node{suffix}.json": node, f"retinad-endpoint{suffix}.json": endpoint}
    return {k: _fill_all(v, naming) for k, v in out.items()}  # type: ignore[misc]
