"""Plain data shared by every layer: what an endpoint is and which way traffic goes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from types import MappingProxyType


class Direction(IntEnum):
    """Traffic direction from the endpoint's point of view; mirrors RETINAD_DIR_* in bpf/retinad.h.

    ingress = towards the container/host, egress = away from it. On a container veth's host
    side, tc egress is therefore the container's ingress.
    """

    UNKNOWN = 0
    INGRESS = 1
    EGRESS = 2

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Endpoint:
    """Who an IP address or host-side interface belongs to.

    Label values come from container names, labels and pod names: untrusted text that is
    only ever exported as label values, never interpreted.
    """

    namespace: str
    """Compose project, Kubernetes namespace, or "" when the source has none."""
    name: str
    """Container, pod, VM or host name."""
    workload_kind: str
    """container, compose_service, Deployment, host, interface, ..."""
    workload_name: str
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        for name in ("namespace", "name", "workload_kind", "workload_name"):
            object.__setattr__(self, name, safe_label_value(getattr(self, name)))


MAX_LABEL_VALUE = 512
"""Longer values are cut (with a trailing "…"): Kubernetes names stop at 253 characters,
and an unbounded Docker label must not make every scrape megabytes long."""


def safe_label_value(text: str) -> str:
    """Make untrusted text exportable as a Prometheus label value, meaning unchanged.

    The exposition format escapes backslash, double quote and newline itself, and any
    other UTF-8 is legal. What would break a scrape is text that is not UTF-8 at all:
    lone surrogates (from names decoded with surrogateescape) fail the encoder, and NUL
    ends C strings in some parsers. Those become U+FFFD; everything else passes through.
    """
    if not isinstance(text, str):
        text = str(text)
    clean = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    clean = clean.replace("\x00", "\ufffd")
    if len(clean) > MAX_LABEL_VALUE:
        clean = clean[: MAX_LABEL_VALUE - 1] + "\u2026"
    return clean


UNKNOWN_ENDPOINT = Endpoint(
    namespace="", name="unknown", workload_kind="unknown", workload_name="unknown"
)
"""What an endpoint series carries when no resolver knows the address."""

OVERFLOW_ENDPOINT = Endpoint(
    namespace="", name="overflow", workload_kind="overflow", workload_name="overflow"
)
"""The series that receives counts once a kernel map is full, so no count vanishes."""
