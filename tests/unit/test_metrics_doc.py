"""docs/METRICS.md names every metric naming.py defines, in both namings, and every map."""

from __future__ import annotations

from pathlib import Path

from retinad.exporter import naming

DOC = (Path(__file__).resolve().parents[2] / "docs" / "METRICS.md").read_text()


def test_every_spec_is_documented_in_both_namings() -> None:
    for spec in naming.ALL_SPECS:
        assert f"`{spec.prometheus}_total`" in DOC, spec.prometheus
        assert f"`{spec.retina}`" in DOC, spec.retina


def test_every_self_metric_is_documented() -> None:
    for name in (
        naming.BUILD_INFO,
        naming.SCRAPE_SUCCESS,
        naming.SCRAPE_DURATION,
        naming.MAP_ENTRIES,
        naming.MAP_CAPACITY,
        naming.MAP_OVERFLOW_PACKETS + "_total",
        naming.ATTACH_ERRORS + "_total",
        naming.ATTACHED_INTERFACES,
        naming.SERIES_DROPPED + "_total",
        naming.RESOLVER_UP,
        naming.RESOLVER_ENDPOINTS,
        naming.EVENTS + "_total",
        naming.EVENTS_LOST + "_total",
        naming.EVENTS_SAMPLED_OUT + "_total",
    ):
        assert f"`{name}`" in DOC, name


def test_every_map_is_documented() -> None:
    """Each value the ``map`` label takes, and the BPF map behind it, has a row."""
    from retinad.plugins import dropreason, packetparser

    maps = {**packetparser.MAP_LABELS, dropreason.MAP_NAME: dropreason.MAP_NAME}
    from retinad.plugins import flow_events

    maps[b"fe_conn".decode()] = flow_events.CONN_MAP_LABEL
    assert len(maps) == 5
    for bpf_name, label in maps.items():
        assert f"| `{label}` | `{bpf_name}` |" in DOC, label
