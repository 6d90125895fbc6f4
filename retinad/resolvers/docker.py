"""The "docker" resolver: names IPs and host-side veths after the containers of a Docker engine.

Every running container that has its own network namespace becomes one endpoint (the
mapping is docker_naming.py):

* name = the container name; namespace = its Compose project (label
  ``com.docker.compose.project``) or ""; workload_kind = "compose_service" with
  workload_name = the Compose service (label ``com.docker.compose.service``), else
  "container" with workload_name = the container name; labels = the container's labels,
  passed through as untrusted text (never interpreted, never exported as label names).
* it claims every address the container has on every network it is attached to (IPv4 and
  IPv6), and the host-side veth of every one of its interfaces.

``--net=container:X`` containers claim nothing: they have no address of their own, so
X's addresses and veths keep resolving to X, and when X goes nothing answers for them.
``--net=host`` (the host's addresses) and ``--net=none`` containers claim nothing either.

Keeping current: a ``Follower`` thread runs one session after another. A session connects,
subscribes to the event stream *first* (with ``since`` = the daemon's clock, so an event
between the subscription and the list is replayed rather than lost: dockerd flushes the
response headers before it registers the subscriber), lists the running containers into
the index with one ``replace_all``, marks the resolver up, then handles each event (start,
die, destroy, rename; network connect, disconnect) by inspecting just that container again
and putting or removing its claim. Handling is idempotent (an event seen twice, or replayed
from before the list, only re-inspects), so the index converges on Docker's own state.
When the stream breaks (dockerd stopped, restarted, or was never there) ``up`` turns
False, the index keeps answering with what it last knew, and the next session, after the
Follower's backoff, relists.

Bounded reads: every call has ``api_timeout`` (``read_timeout_seconds``) as its socket
timeout, and the event stream is read in windows (``EventWindow``) that dockerd itself
ends, so an engine that accepts and never answers, or a connection that died without a
FIN, raises TimeoutError within twice that instead of leaving the resolver "up" on a dead
line. Every ``resync_interval`` a connected session relists as well (an event dockerd's
own buffer dropped cannot leave a name wrong for longer). Nothing here ever calls Docker from a
lookup: ``by_ip``/``by_ifindex`` are dictionary reads.

Host-side veth: the container's network namespace is ``/proc/<State.Pid>/ns/net``. It is
never entered: following kernel/netns.py's rule, the resolver asks the kernel, from our own
namespace, which id ours gives that one (RTM_GETNSID on the opened ``/proc`` file) and
takes the host's veths whose IFLA_LINK_NETNSID is that id: exactly the veths whose peer
lives in the container, with no fork, no namespace switch and no fd left open; a link dump
before the query makes the kernel assign the id if it had not yet. A container whose
process is gone by then keeps its addresses and claims no veth (its die event follows).

Client: the docker SDK's low-level ``APIClient`` rather than ``DockerClient``: inspect
returns the engine's JSON as-is (no model objects that reload themselves with extra
requests), and an event window (docker_stream.py) is the SDK's ``CancellableStream``,
whose ``close`` shuts the socket down, which is how ``stop`` ends a blocked read at once.
``version="auto"`` negotiates the API version, so a 20.10 engine (API 1.41) works with a
newer SDK, and makes an absent engine fail at connect time, inside the session.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

import docker
import docker.errors
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from retinad.kernel import netns
from retinad.kernel.netns import NOT_ASSIGNED
from retinad.resolvers.base import ResolverContext
from retinad.resolvers.docker_naming import (
    COMPOSE_PROJECT,
    COMPOSE_SERVICE,
    Inspect,
    as_dict,
    as_str,
    container_ips,
    container_labels,
    container_name,
    endpoint_of,
    has_own_netns,
    network_mode,
    running_pid,
)
from retinad.resolvers.docker_stream import (
    API_TIMEOUT,
    WINDOW_SLACK,
    DaemonClock,
    EventWindow,
    close_quietly,
    daemon_since,
    daemon_time,
    is_timeout,
    open_window,
    probe,
)
from retinad.resolvers.follow import FollowedIndex, Follower, Resync
from retinad.resolvers.index import Claim, EndpointIndex

__all__ = [
    "API_TIMEOUT",
    "COMPOSE_PROJECT",
    "COMPOSE_SERVICE",
    "CONTAINER_EVENTS",
    "EVENT_FILTERS",
    "NETWORK_EVENTS",
    "DockerResolver",
    "Inspect",
    "VethFinder",
    "container_ips",
    "container_labels",
    "container_name",
    "create",
    "daemon_since",
    "daemon_time",
    "endpoint_of",
    "has_own_netns",
    "network_mode",
    "probe",
    "running_pid",
]
CONTAINER_EVENTS = ("start", "die", "destroy", "rename")
NETWORK_EVENTS = ("connect", "disconnect")
EVENT_FILTERS: dict[str, list[str]] = {
    "type": ["container", "network"],
    "event": [*CONTAINER_EVENTS, *NETWORK_EVENTS],
}
"""What can change a container's claim. A network's own destroy event (type network) also
passes the filter and is ignored: its containers were disconnected first."""

# --- host-side veths (netlink in the host namespace) --------------------------------------


class VethFinder:
    """Finds the host-side veths of a process's network namespace (kernel/netns.py), over
    one rtnetlink socket kept for a session."""

    def __init__(self) -> None:
        self._ipr = IPRoute()

    def close(self) -> None:
        self._ipr.close()

    def veths_by_nsid(self) -> dict[int, list[int]]:
        """Peer namespace id -> our veths whose peer is there (assigning the ids)."""
        return netns.veths_by_peer_nsid(self._ipr)

    def nsid_of(self, pid: int) -> int:
        """The id our namespace has for ``pid``'s network namespace, or NOT_ASSIGNED."""
        return netns.nsid_of_pid(self._ipr, pid)

    def veths_of(self, pid: int, table: Mapping[int, list[int]] | None = None) -> list[int]:
        """Host-side ifindexes of the veths into ``pid``'s network namespace."""
        if table is None:
            table = self.veths_by_nsid()
        nsid = self.nsid_of(pid)
        return [] if nsid == NOT_ASSIGNED else list(table.get(nsid, ()))


# --- the resolver -------------------------------------------------------------------------


class DockerResolver(FollowedIndex):
    """Containers of one Docker engine, kept current from its events (module docstring)."""

    name = "docker"

    def __init__(
        self,
        *,
        host: str,
        logger: logging.Logger | None = None,
        on_change: Callable[[], None] | None = None,
        api_timeout: float = API_TIMEOUT,
        resync_interval: float = 0.0,
    ) -> None:
        self.host = host
        self._log = logger or logging.getLogger("retinad.resolvers.docker")
        self._timeout = api_timeout
        self.resync = Resync(resync_interval)
        self.index = EndpointIndex(on_change)
        self.follower = Follower(
            "docker", self._session, logger=self._log, interrupt=self._interrupt
        )
        self._lock = threading.Lock()
        self._client: Any = None
        self._stream: Any = None

    # --- one session (Follower thread) --------------------------------------------------

    def _session(self, follower: Follower) -> None:
        step = "connecting"
        try:
            probe(self.host, self._timeout)
            client = docker.APIClient(base_url=self.host, version="auto", timeout=self._timeout)
        except Exception as err:
            self._raise_if_timeout(err, step)
            raise
        veths: VethFinder | None = None
        try:
            if not self._keep(client=client):
                return
            step = "reading the engine's clock"
            clock = DaemonClock(client.info())
            since = clock.start
            step = "subscribing to events"
            window = self._subscribe(client, clock, since)
            veths = VethFinder()
            step = "listing containers"
            claims = self._list(client, veths, follower)
            if follower.stopping.is_set():
                return
            self.index.replace_all(claims)
            self.resync.listed()
            follower.mark_up()
            self._log.info("docker: %d containers from %s", len(claims), self.host)
            while not follower.stopping.is_set():
                step = "reading the event stream"
                for event in window.stream:
                    if follower.stopping.is_set():
                        return
                    if isinstance(event, Mapping):
                        self._on_event(client, veths, event)
                if follower.stopping.is_set():
                    return
                if clock.now() < window.until - WINDOW_SLACK:
                    raise ConnectionError(
                        f"event stream from {self.host} closed before dockerd ended it"
                    )
                close_quietly(window.stream)
                step = "subscribing to events"
                window = self._subscribe(client, clock, window.until - WINDOW_SLACK)
                if self.resync.due():
                    step = "relisting containers"
                    self._resync(client, veths, follower)
        except Exception as err:
            self._raise_if_timeout(err, step)
            raise
        finally:
            with self._lock:
                stream = self._stream
                self._client = None
                self._stream = None
            if veths is not None:
                veths.close()
            close_quietly(stream, client)

    def _subscribe(self, client: Any, clock: DaemonClock, since: float) -> EventWindow:
        """The next event window (docker_stream.py), published for ``stop`` to close."""
        window = open_window(client, clock, since, self._timeout, EVENT_FILTERS)
        if not self._keep(stream=window.stream):
            close_quietly(window.stream)
            raise ConnectionError("stopped")
        return window

    def _resync(self, client: Any, veths: VethFinder, follower: Follower) -> None:
        """The periodic relist while connected: repairs whatever an event missed."""
        claims = self._list(client, veths, follower)
        if follower.stopping.is_set():
            return
        self.index.replace_all(claims)
        self.resync.done()
        self._log.debug("docker: resync, %d containers", len(claims))

    def _raise_if_timeout(self, err: BaseException, step: str) -> None:
        """A timeout anywhere in the SDK's stack (requests, urllib3, the socket) becomes one
        TimeoutError naming the source, the bound and what was waited for."""
        if is_timeout(err):
            raise TimeoutError(
                f"no answer from {self.host} within {self._timeout:g}s ({step})"
            ) from None

    def _keep(self, *, client: Any = None, stream: Any = None) -> bool:
        """Publish what ``stop`` must close; False if a stop already came (then the session
        closes it itself, so a stop racing with a connect never leaves a read blocked)."""
        with self._lock:
            if client is not None:
                self._client = client
            if stream is not None:
                self._stream = stream
            return not self.follower.stopping.is_set()

    def _interrupt(self) -> None:
        with self._lock:
            stream, client = self._stream, self._client
        close_quietly(stream, client)

    def _list(self, client: Any, veths: VethFinder, follower: Follower) -> dict[str, Claim]:
        table = veths.veths_by_nsid()
        claims: dict[str, Claim] = {}
        for summary in client.containers(quiet=True):
            if follower.stopping.is_set():
                break
            cid = as_str(as_dict(summary).get("Id"))
            if not cid:
                continue
            try:
                info = client.inspect_container(cid)
            except docker.errors.NotFound:
                continue  # gone since the list; its destroy event is in the stream
            claim = self._claim_of(info, veths, table)
            if claim is not None:
                claims[cid] = claim
        return claims

    def _on_event(self, client: Any, veths: VethFinder, event: Mapping[str, Any]) -> None:
        kind, action = as_str(event.get("Type")), as_str(event.get("Action"))
        actor = as_dict(event.get("Actor"))
        if kind == "container" and action in CONTAINER_EVENTS:
            cid = as_str(actor.get("ID"))
        elif kind == "network" and action in NETWORK_EVENTS:
            cid = as_str(as_dict(actor.get("Attributes")).get("container"))
        else:
            return
        if not cid:
            return
        self._log.debug("docker: %s %s %s", kind, action, cid[:12])
        if action == "destroy":
            self.index.remove(cid)
            return
        try:
            info = client.inspect_container(cid)
        except docker.errors.NotFound:
            self.index.remove(cid)
            return
        claim = self._claim_of(info, veths)
        if claim is None:
            self.index.remove(cid)
        else:
            self.index.put(cid, claim)

    def _claim_of(
        self, info: Inspect, veths: VethFinder, table: Mapping[int, list[int]] | None = None
    ) -> Claim | None:
        """What a running container with its own network namespace answers for; None for
        anything else (stopped, --net=host/none/container:, or no address and no veth)."""
        pid = running_pid(info)
        if not pid or not has_own_netns(info):
            return None
        ips = container_ips(info)
        try:
            ifindexes = veths.veths_of(pid, table)
        except (OSError, NetlinkError) as err:
            self._log.debug("docker: no veth for %s: %s", container_name(info), err)
            ifindexes = []
        if not ips and not ifindexes:
            return None
        return Claim.of(endpoint_of(info), ips, ifindexes)


def create(ctx: ResolverContext) -> DockerResolver:
    cfg = ctx.settings.resolvers.docker
    return DockerResolver(
        host=cfg.host,
        logger=ctx.logger,
        on_change=ctx.on_change,
        api_timeout=float(cfg.read_timeout_seconds),
        resync_interval=float(cfg.resync_interval_seconds),
    )
