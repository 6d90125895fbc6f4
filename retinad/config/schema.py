"""The configuration schema: one frozen dataclass per TOML table.

The loader (load.py) walks these dataclasses generically: a field's type says what TOML
value it accepts (``Literal`` for a fixed set of strings, ``list[str]``, nested dataclasses
for sub-tables), ``metadata`` carries bounds, and ``__post_init__``-free validators live in
``VALIDATORS`` in load.py. Each component receives only its own table.

Defaults here are the embedded default config; ``retinad/default.toml`` spells the same
values out for operators and a test keeps the two equal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

DEFAULT_PORT = 10095
"""Outside the exhausted 9100-9999 exporter range and not Retina's 10093, so both can run."""

RESOLVER_NAMES = ("host", "docker", "containerd", "kubernetes", "static")
"""The one table of resolvers: the names [resolvers].order accepts. Each is also the module
``retinad.resolvers.<name>`` that builds it (resolvers/registry.py derives its table from
this one, because config/ may not import resolvers/)."""


def _bounded(default: int, lo: int, hi: int) -> int:
    return field(default=default, metadata={"min": lo, "max": hi})


@dataclass(frozen=True)
class WebSettings:
    """``[web]``: where and how /metrics is served (node_exporter's ``--web.*`` flags)."""

    listen_address: list[str] = field(default_factory=lambda: [f":{DEFAULT_PORT}"])
    """Addresses to listen on, each "host:port", "[v6]:port" or ":port" (all addresses)."""
    telemetry_path: str = "/metrics"
    """Path under which metrics are served; "/" serves the landing page."""
    config_file: str = ""
    """exporter-toolkit web config (YAML: tls_server_config, basic_auth_users); "" for none.
    Re-read on every request, so certificates and passwords change without a restart."""
    max_requests: int = _bounded(40, 0, 10000)
    """Concurrent scrape limit (0 = unlimited), as node_exporter's --web.max-requests."""


@dataclass(frozen=True)
class MetricsSettings:
    """``[metrics]``: which series exist and what they are called."""

    mode: Literal["basic", "advanced"] = "advanced"
    """basic: node-level series only. advanced: also one series set per endpoint
    (container, pod, host) with its labels. Advanced is the default because per-container
    attribution is what retinad is for; its cardinality is bounded by the map sizes."""
    naming: Literal["prometheus", "retina"] = "prometheus"
    """prometheus: retinad_* names in base units. retina: Microsoft Retina's
    networkobservability_* names and labels, so Retina's dashboards work unchanged."""
    ip_label: bool = False
    """Add the endpoint's IP address as an ``ip`` label on endpoint series."""
    python_runtime: bool = False
    """Also export the Python interpreter's gc/platform metrics (off: they describe
    retinad's interpreter, not the network; process_* metrics are always exported)."""


@dataclass(frozen=True)
class InterfaceSelection:
    """``[packetparser.interfaces]``: which host interfaces get tc programs."""

    include: list[str] = field(default_factory=list)
    """Glob patterns of host interface names. Empty means every interface that is up, not
    loopback and not a container veth. A name matched here is a host interface even if it
    is a veth."""
    exclude: list[str] = field(default_factory=list)
    """Glob patterns removed from what include selected."""


@dataclass(frozen=True)
class EventLogSettings:
    """``[packetparser.events.log]``: where flow records are written as JSON lines."""

    path: str = ""
    """A file (rotated by size), "-" for standard output, or "" for no flow log."""
    max_size_mib: int = _bounded(100, 1, 102400)
    """Rotate the file when the next record would take it past this size."""
    max_files: int = _bounded(5, 1, 1000)
    """Rotated files kept beside the current one (path.1 is the newest)."""


@dataclass(frozen=True)
class EventSettings:
    """``[packetparser.events]``: the per-packet/per-flow event stream (opt-in).

    Metrics never depend on it: they are counted in the kernel whether events are on or
    not. Events feed the flow log and ``retinad flows`` (docs/FLOWS.md).
    """

    enabled: bool = False
    transport: Literal["auto", "ringbuf", "perf"] = "auto"
    """ringbuf (kernel 5.8+, one shared buffer), perf (per-CPU perf arrays), or auto:
    ringbuf where the kernel has it, else perf (``retinad check`` says which)."""
    ring_pages: int = _bounded(2048, 1, 262144)
    """ringbuf size in 4 KiB pages, a power of two (2048 = 8 MiB, Retina's default)."""
    perf_pages: int = _bounded(64, 1, 4096)
    """perf buffer size per CPU in 4 KiB pages, a power of two."""
    wakeup_events: int = _bounded(64, 1, 1_000_000)
    """Wake the reader every N events per CPU (perf wakeup_events; ringbuf: a forced
    wakeup every Nth submission); the rest is taken by the timed drain."""
    drain_interval_ms: int = _bounded(5, 1, 1000)
    """How often the reader drains what arrived without a wakeup."""
    queue_size: int = _bounded(65536, 16, 1 << 24)
    """Events held between the reader and the writers; beyond it they are lost (counted
    as retinad_events_lost_total{stage="queue"})."""
    data_sampling_rate: int = _bounded(1, 1, 1_000_000)
    """Report 1 in N (Retina's dataSamplingRate): packets in low aggregation (SYN, FIN and
    RST always), flows in high aggregation (decided at a flow's first packet)."""
    aggregation_level: Literal["low", "high"] = "high"
    """low: every packet; high: on SYN/FIN/RST, flag change or every report interval."""
    report_interval_seconds: int = _bounded(30, 1, 3600)
    """high: report a busy flow at least this often; an idle one is reported and taken
    out of the connection table after this long."""
    max_flows: int = _bounded(65536, 64, 1 << 22)
    """high: capacity of the connection table; when full, a new flow's packets are
    reported one by one."""
    socket: str = "/run/retinad/flows.sock"
    """The unix socket ``retinad flows`` follows (mode 0600, root only); "" for none."""
    log: EventLogSettings = field(default_factory=EventLogSettings)


@dataclass(frozen=True)
class PacketParserSettings:
    """``[packetparser]``: tc programs counting TCP/UDP packets per interface and endpoint."""

    enabled: bool = True
    interfaces: InterfaceSelection = field(default_factory=InterfaceSelection)
    container_interfaces: bool = True
    """Attach to the host side of every container veth (existing and new ones)."""
    attach_mode: Literal["auto", "tcx", "clsact"] = "auto"
    """auto: tcx links where the kernel has them (6.6+), else clsact + bpf filter."""
    remote_context: bool = False
    """Also count per (local endpoint, remote IP) pair, bounded by max_remote_flows."""
    max_endpoints: int = _bounded(16384, 64, 1 << 20)
    """Capacity of the per-endpoint map; when full, counts go to an overflow series."""
    max_remote_flows: int = _bounded(65536, 64, 1 << 22)
    """Capacity of the remote-context map; when full, counts go to an overflow series."""
    events: EventSettings = field(default_factory=EventSettings)


@dataclass(frozen=True)
class DropReasonSettings:
    """``[dropreason]``: packets the kernel drops, by its own drop reason."""

    enabled: bool = True
    max_entries: int = _bounded(8192, 64, 1 << 20)
    """Capacity of the drop map; when full, counts go to an overflow series."""
    source: Literal["auto", "tracepoint", "hooks"] = "auto"
    """Where drops are seen: the skb:kfree_skb tracepoint (kernel reasons, 5.17+), Retina's
    kprobe hook points (its categories, any kernel with kprobes), or "auto" (the tracepoint
    where it has reasons, else the hooks)."""


@dataclass(frozen=True)
class DockerResolverSettings:
    """``[resolvers.docker]``: containers of a Docker engine."""

    host: str = "unix:///var/run/docker.sock"
    """The Docker API, as DOCKER_HOST spells it: unix:///path or tcp://host:port."""
    read_timeout_seconds: int = _bounded(10, 1, 300)
    """Longest wait for any answer from the source: one API call, or a sign of life from
    an event stream that has gone silent. A source that accepts and never answers, or a
    connection that died without a FIN, is reported down within twice this."""
    resync_interval_seconds: int = _bounded(300, 0, 86400)
    """Full relist while connected, so a missed event cannot leave a stale or missing name
    past this; 0 relists only on reconnect."""


@dataclass(frozen=True)
class ContainerdResolverSettings:
    """``[resolvers.containerd]``: containers and tasks of a containerd."""

    address: str = "/run/containerd/containerd.sock"
    """containerd's gRPC socket."""
    namespaces: list[str] = field(default_factory=lambda: ["k8s.io", "default"])
    """containerd namespaces to follow (k8s.io is where the CRI puts pods)."""
    read_timeout_seconds: int = _bounded(10, 1, 300)
    """Longest wait for any answer from the source: one API call, or a sign of life from
    an event stream that has gone silent. A source that accepts and never answers, or a
    connection that died without a FIN, is reported down within twice this."""
    resync_interval_seconds: int = _bounded(300, 0, 86400)
    """Full relist while connected, so a missed event cannot leave a stale or missing name
    past this; 0 relists only on reconnect."""


@dataclass(frozen=True)
class KubernetesResolverSettings:
    """``[resolvers.kubernetes]``: pods (and services) of a Kubernetes cluster."""

    kubeconfig: str = ""
    """Path of a kubeconfig file; "" uses the in-cluster service account."""
    node_name: str = ""
    """This node's name as Kubernetes knows it; "" means the host name."""
    scope: Literal["auto", "node", "cluster"] = "auto"
    """node: pods on this node only. cluster: every pod and service, so the far end of
    a flow is named too. auto: cluster when [packetparser].remote_context, else node."""


@dataclass(frozen=True)
class StaticEndpoint:
    """One ``[[resolvers.static.endpoints]]`` entry: a CIDR and the endpoint it names."""

    cidr: str
    """IPv4 or IPv6 network ("10.0.3.0/24", "fd00::/64") or one address."""
    name: str
    """The endpoint's name (VM, service, host)."""
    namespace: str = ""
    workload_kind: str = "static"
    workload_name: str = ""
    """"" means the same as name."""
    labels: dict[str, str] = field(default_factory=dict)
    """Extra labels kept with the endpoint (not exported as label names)."""


@dataclass(frozen=True)
class StaticResolverSettings:
    """``[resolvers.static]``: endpoints written in the config; longest prefix wins."""

    endpoints: list[StaticEndpoint] = field(default_factory=list)


@dataclass(frozen=True)
class ResolverSettings:
    """``[resolvers]``: how IPs and interfaces are named in advanced mode."""

    order: list[str] = field(default_factory=lambda: ["host"])
    """Resolvers asked in turn; the first answer wins. "host" names endpoints from what
    the host itself knows (interface, network namespace); the others are "docker",
    "containerd", "kubernetes" and "static"."""
    grace_period_seconds: int = _bounded(300, 0, 86400)
    """How long a vanished endpoint's series keep their last values before they are
    removed (and its kernel map keys freed)."""
    max_endpoint_series: int = _bounded(10000, 16, 1_000_000)
    """Cap on endpoint label sets per metric; beyond it counts go to an "overflow"
    endpoint series and retinad_series_dropped_total counts the refused label sets."""
    docker: DockerResolverSettings = field(default_factory=DockerResolverSettings)
    containerd: ContainerdResolverSettings = field(default_factory=ContainerdResolverSettings)
    kubernetes: KubernetesResolverSettings = field(default_factory=KubernetesResolverSettings)
    static: StaticResolverSettings = field(default_factory=StaticResolverSettings)


@dataclass(frozen=True)
class LatencyTarget:
    """One ``[[latency.targets]]`` entry: an upstream whose latency is measured."""

    name: str
    """The ``target`` label. Several entries may share a name (one target, many
    addresses); "apiserver" is also Retina's name for the API server."""
    address: str
    """IPv4 or IPv6 address or network ("10.0.0.10", "10.0.0.0/24", "fd00::/64")."""
    port: int = _bounded(0, 0, 65535)
    """The server port of measured connections; 0 for any port."""


@dataclass(frozen=True)
class LatencySettings:
    """``[latency]``: handshake and request latency to targets, measured in the kernel
    by packetparser's programs (packetparser must be enabled)."""

    timeout_seconds: int = _bounded(5, 1, 300)
    """A SYN or request unanswered this long counts once in retinad_no_response_total."""
    max_pending: int = _bounded(16384, 64, 1 << 20)
    """Capacity of the LRU map of SYNs and requests waiting for an answer (and of
    measured connections); the least recently used entry is evicted when full."""
    targets: list[LatencyTarget] = field(default_factory=list)
    """Empty: nothing is measured (in Kubernetes mode the API server still is)."""


@dataclass(frozen=True)
class LogSettings:
    """``[log]``: node_exporter's --log.level and --log.format."""

    level: Literal["debug", "info", "warn", "error"] = "info"
    format: Literal["logfmt", "json"] = "logfmt"


@dataclass(frozen=True)
class Settings:
    """The whole configuration; each component gets only its own table."""

    web: WebSettings = field(default_factory=WebSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    packetparser: PacketParserSettings = field(default_factory=PacketParserSettings)
    dropreason: DropReasonSettings = field(default_factory=DropReasonSettings)
    resolvers: ResolverSettings = field(default_factory=ResolverSettings)
    latency: LatencySettings = field(default_factory=LatencySettings)
    log: LogSettings = field(default_factory=LogSettings)
