"""The "containerd" resolver: names the network namespaces of containerd's tasks.

containerd knows no IP addresses (CNI, or whoever made the namespace, does), so this
resolver asks containerd only *which* tasks run and *who* they are, and asks the kernel for
the rest:

* containerd's gRPC API (its socket, ``[resolvers.containerd].address``) lists the
  containers and tasks of each configured namespace (``namespaces``, default ``k8s.io`` and
  ``default``) and streams task and container events;
* for each task, ``/proc/<pid>/ns/net`` is read with pyroute2 for the addresses inside
  (IPv4 and IPv6; not loopback, not IPv6 link-local: every namespace has its own fe80::
  addresses, which name nothing outside their link) and for the host side of each veth
  (``IFLA_LINK`` of a veth whose ``IFLA_LINK_NETNSID`` is the id of *our* namespace);
* names come from labels, one claim per network namespace (containerd_naming.py). Tasks
  in our own namespace (host network) claim nothing.

The Follower session subscribes to events *first* (``/tasks/{create,start,exit,delete}``,
``/containers/{update,delete}``), then lists, then replaces the index and marks itself up,
then applies each event by re-reading that one container and task. Events carry no
addresses, so a re-read is the only way to know; a missed event is repaired at the next
resync. Lookups only read the index: the API is never called from ``by_ip``/``by_ifindex``.

Faults: every call has a deadline (``read_timeout``); the event stream has none, since it is
silent while nothing happens, so a pump thread moves its messages into a queue and the
session, after ``read_timeout`` without one, makes one call over the same channel (and so
the same HTTP/2 connection): a containerd that stopped answering, or a connection that died
without a FIN, fails that call with DEADLINE_EXCEEDED and the session ends with a
TimeoutError naming the address; the Follower reports it down and reconnects with backoff.
gRPC's own HTTP/2 keepalive pings would do the same job, but containerd's server keeps
grpc-go's default enforcement (at most one ping per 5 minutes): tried against containerd
1.6.20 here, 1 s pings ended a silent event stream after 4 s with GOAWAY
"too_many_pings", so pings fast enough to matter break what they should watch. The session also
relists every ``resync_interval`` (an address added inside a namespace, or any event
missed, is picked up then).

Design choices:

* **Client**: containerd_client.py (vendored stubs, typed calls, deadlines).
* **Reading a namespace**: kernel/netns.py's ``read_netns``: a short-lived thread enters
  it, dumps links and addresses from a socket made there, and exits (about 2 ms); the
  caller never moves and nothing forks next to gRPC's threads.
* **stop()** closes the gRPC channel, which cancels the event stream (and any call in
  flight) at once; the session thread returns from its read with CANCELLED.

containerd and retinad must share the PID namespace (the task PIDs are containerd's).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator

import grpc

from retinad.kernel import netns
from retinad.kernel.netns import NetnsView, NsKey, read_netns
from retinad.resolvers.base import ResolverContext
from retinad.resolvers.containerd_api.services.containers.v1 import containers_pb2
from retinad.resolvers.containerd_api.services.events.v1 import events_pb2
from retinad.resolvers.containerd_client import (
    CALL_TIMEOUT,
    EVENT_TYPES,
    LIVE_STATUSES,
    NAMESPACE_HEADER,
    ContainerdClient,
    describe,
    event_filters,
    grpc_target,
    status_code,
)
from retinad.resolvers.containerd_naming import (
    CRI_KIND,
    POD_NAME,
    POD_NAMESPACE,
    Member,
    endpoint_of,
    owner_of,
)
from retinad.resolvers.follow import FollowedIndex, Follower, Resync
from retinad.resolvers.index import Claim, EndpointIndex

__all__ = [
    "CALL_TIMEOUT",
    "CRI_KIND",
    "EVENT_TYPES",
    "LIVE_STATUSES",
    "NAMESPACE_HEADER",
    "POD_NAME",
    "POD_NAMESPACE",
    "ContainerdClient",
    "ContainerdResolver",
    "Member",
    "NetnsView",
    "create",
    "endpoint_of",
    "event_filters",
    "grpc_target",
    "owner_of",
    "read_netns",
]

_END = object()
"""Put in the event queue by the pump when the stream ends without an error."""


class ContainerdResolver(FollowedIndex):
    """Follows a containerd and names its tasks' network namespaces (module docstring)."""

    name = "containerd"

    def __init__(
        self,
        *,
        address: str,
        namespaces: Iterable[str],
        logger: logging.Logger | None = None,
        on_change: Callable[[], None] | None = None,
        host_netns: str = netns.OUR_NETNS,
        read_timeout: float = CALL_TIMEOUT,
        resync_interval: float = 0.0,
    ) -> None:
        self.address = address
        self.namespaces = list(dict.fromkeys(namespaces))
        self._log = logger or logging.getLogger("retinad.resolvers.containerd")
        self._host_netns = host_netns
        self._timeout = read_timeout
        self.resync = Resync(resync_interval)
        self.index = EndpointIndex(on_change)
        self.follower = Follower(
            self.name, self._session, logger=self._log, interrupt=self._interrupt
        )
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        # session-thread state: (containerd namespace, container id) -> its live task
        self._members: dict[tuple[str, str], Member] = {}
        self._views: dict[NsKey, NetnsView] = {}

    # --- the session (Follower thread) ------------------------------------------------

    def _interrupt(self) -> None:
        with self._lock:
            channel = self._channel
        if channel is not None:
            channel.close()

    def _session(self, follower: Follower) -> None:
        channel = grpc.insecure_channel(grpc_target(self.address))
        with self._lock:
            self._channel = channel
        pump: threading.Thread | None = None
        step = "subscribing to events"
        try:
            if follower.stopping.is_set():
                return
            if not self.namespaces:  # nothing to follow (and no filter would mean all)
                self.index.clear()
                follower.mark_up()
                follower.stopping.wait()
                return
            client = ContainerdClient(channel, call_timeout=self._timeout)
            events = client.subscribe(event_filters(self.namespaces))
            inbox: queue.Queue[object] = queue.Queue()
            pump = threading.Thread(
                target=_pump, args=(events, inbox), name="containerd-events", daemon=True
            )
            pump.start()
            step = "listing tasks and containers"
            self._relist(client)
            self.resync.listed()
            follower.mark_up()
            while not follower.stopping.is_set():
                step = "reading the event stream"
                try:
                    item = inbox.get(timeout=self._timeout)
                except queue.Empty:  # silent for a while: is the connection still there?
                    step = "checking a silent event stream"
                    client.probe(self.namespaces[0])
                    item = None
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, events_pb2.Envelope):
                    step = "handling an event"
                    self._apply(client, item)
                if self.resync.due():
                    step = "relisting"
                    self._relist(client)
                    self.resync.done()
        except grpc.RpcError as err:  # one line for the Follower's log, not gRPC's dump
            if follower.stopping.is_set():
                return
            if status_code(err) == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise TimeoutError(
                    f"no answer from containerd at {self.address} within "
                    f"{self._timeout:g}s ({step})"
                ) from None
            raise ConnectionError(f"containerd at {self.address}: {describe(err)}") from None
        finally:
            with self._lock:
                self._channel = None
            channel.close()  # cancels the stream: the pump returns
            if pump is not None:
                pump.join(2.0)

    def _relist(self, client: ContainerdClient) -> None:
        members: dict[tuple[str, str], Member] = {}
        views: dict[NsKey, NetnsView] = {}
        host = self._host_key()
        for ns in self.namespaces:
            live = {
                (p.container_id or p.id): p
                for p in client.tasks(ns)
                if p.status in LIVE_STATUSES and p.pid > 0
            }
            if not live:
                continue
            for container in client.containers(ns):
                proc = live.get(container.id)
                if proc is None:
                    continue
                member = self._member(ns, container, proc.pid, host, views)
                if member is not None:
                    members[(ns, container.id)] = member
        self._members = members
        self._views = views
        claims = {owner_of(key): claim for key in views if (claim := self._claim(key))}
        self.index.replace_all(claims)
        self._log.debug("containerd: %d tasks in %d network namespaces", len(members), len(claims))

    def _apply(self, client: ContainerdClient, envelope: events_pb2.Envelope) -> None:
        ns, topic = envelope.namespace, envelope.topic
        kind = EVENT_TYPES.get(topic)
        if kind is None or ns not in self.namespaces:
            return
        # containerd's type URLs have no "type.googleapis.com/" part, which Any.Unpack
        # insists on: compare the message name and parse the bytes ourselves.
        if envelope.event.type_url.rsplit("/", 1)[-1] != kind.DESCRIPTOR.full_name:
            self._log.debug("containerd: %s carries %s", topic, envelope.event.type_url)
            return
        event = kind.FromString(envelope.event.value)
        cid = event.id if topic.startswith("/containers/") else event.container_id
        if topic == "/tasks/exit" and event.id and event.id != cid:
            return  # an exec'd process ended, not the task
        self._refresh(client, ns, cid)

    def _refresh(self, client: ContainerdClient, ns: str, cid: str) -> None:
        """Re-read one container and its task; update its namespace's claim."""
        container = client.container(ns, cid)
        proc = client.task(ns, cid) if container is not None else None
        member = None
        views: dict[NsKey, NetnsView] = {}
        if container is not None and proc is not None and proc.status in LIVE_STATUSES:
            member = self._member(ns, container, proc.pid, self._host_key(), views)
        old = self._members.pop((ns, cid), None)
        if member is not None:
            self._members[(ns, cid)] = member
            self._views.update(views)  # fresh read of its namespace
        for key in {m.netns for m in (old, member) if m is not None}:
            claim = self._claim(key)
            if claim is None:
                self._views.pop(key, None)
                self.index.remove(owner_of(key))
            else:
                self.index.put(owner_of(key), claim)

    def _member(
        self,
        ns: str,
        container: containers_pb2.Container,
        pid: int,
        host: NsKey,
        views: dict[NsKey, NetnsView],
    ) -> Member | None:
        """The task ``pid`` of ``container`` as a Member, reading its namespace into
        ``views`` unless already there; None for a task in our namespace or one gone."""
        try:
            fd = os.open(netns.pid_netns_path(pid), os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:  # exited since containerd listed it
            self._log.debug("containerd: %s/%s pid %d: %s", ns, container.id, pid, err)
            return None
        try:
            key = netns.ns_key(fd)
            if key == host:
                return None
            if key not in views:
                with open(self._host_netns, "rb", buffering=0) as hostf:
                    views[key] = read_netns(fd, hostf.fileno())
        except OSError as err:
            self._log.debug("containerd: %s/%s netns: %s", ns, container.id, err)
            return None
        finally:
            os.close(fd)
        endpoint, sandbox = endpoint_of(ns, container)
        created = (container.created_at.seconds, container.created_at.nanos)
        return Member(ns, container.id, key, endpoint, sandbox, created)

    def _claim(self, key: NsKey) -> Claim | None:
        members = [m for m in self._members.values() if m.netns == key]
        view = self._views.get(key)
        if not members or view is None or not (view.ips or view.ifindexes):
            return None
        best = min(members, key=Member.rank)
        return Claim.of(best.endpoint, view.ips, view.ifindexes)

    def _host_key(self) -> NsKey:
        return netns.path_key(self._host_netns)


def _pump(events: Iterator[events_pb2.Envelope], inbox: queue.Queue[object]) -> None:
    """Moves the event stream into ``inbox`` (then _END, or the error that ended it), so
    the session can wait on it with a timeout: a gRPC stream iterator has none."""
    try:
        for envelope in events:
            inbox.put(envelope)
    except BaseException as err:  # handed to the session thread
        inbox.put(err)
        return
    inbox.put(_END)


def create(ctx: ResolverContext) -> ContainerdResolver:
    cfg = ctx.settings.resolvers.containerd
    return ContainerdResolver(
        address=cfg.address,
        namespaces=cfg.namespaces,
        logger=ctx.logger,
        on_change=ctx.on_change,
        read_timeout=float(cfg.read_timeout_seconds),
        resync_interval=float(cfg.resync_interval_seconds),
    )
