"""The "kubernetes" resolver: names pod and Service addresses from the Kubernetes API.

Why it is built this way:

* **List, then watch from the list's resourceVersion** (the informer pattern, without
  client-go): the index is the API's state at that version, and the watch brings every
  change after it, in order. A watch that ends (the server's ``timeoutSeconds``, an
  apiserver restart, a dropped connection) is resumed from the last resourceVersion seen,
  in the same session when possible, else in the next session after the Follower's
  backoff. Nothing is missed and nothing is listed again while the API still has that
  history.
* **410 Gone means relist.** Once etcd has compacted past our resourceVersion the server
  refuses to resume: as an HTTP 410 (watch cache) or, with the watch cache off, as an
  ``ERROR`` event carrying a 410 Status in a 200 stream. Either way the resource relists
  and the index is swapped in one ``replace_all``, so deletions that happened in the gap
  are applied. The relist is counted (``relists``), logged at info, and is not a failure.
* **One Follower per watched resource** (pods; ReplicaSets and Jobs for owners; Services
  in cluster scope; the ``default/kubernetes`` Endpoints for the API server addresses).
  ``up`` is true only when every one of them has its watch established on an index in
  sync. A source that is down at start never fails ``start``: the followers retry with
  backoff.
* **Raw JSON, not the client's models.** Requests go through the official client's
  ``ApiClient`` (auth, CA verification, in-cluster token refresh) as plain GETs
  (kube_http.py: its generated ``*Api`` classes would cost 27 MiB); bodies are parsed
  with ``json`` and only the fields the resolver needs are kept (kube_workload.py).
  ReplicaSets and Jobs are asked for as ``PartialObjectMetadata``: metadata only, no
  spec or status.
* **Owners: watch ReplicaSets and Jobs cluster-wide, metadata only.** A pod's controller
  is a ReplicaSet or Job; naming the Deployment or CronJob needs that object's own owner
  reference. Watching them cluster-wide is one extra watch each, needs no per-pod API
  call (so none can ever sit on a scrape), and sees ownership changes (adoption,
  orphaning); it keeps one small entry (uid -> parent name) per ReplicaSet and Job.
  Until a pod's ReplicaSet is known, the pod-template-hash convention names
  the Deployment; when the ReplicaSet or Job arrives or changes, the pods it owns are
  attributed again.
* **Scope.** node: pods with ``spec.nodeName`` = this node (the local end of every
  flow). cluster: every pod and every Service ClusterIP, so the far end is named too.
* **What claims an address:** every ``status.podIPs`` entry (v4 and v6) of a pod that is
  not host-network (its address is the node's) and not Succeeded/Failed (Kubernetes gives
  that address to the next pod). The newest claim answers for a shared address.
* **RBAC:** list and watch pods, replicasets (apps), jobs (batch), services (cluster
  scope) cluster-wide, and endpoints in ``default``; one that is refused keeps ``up``
  false and its follower retrying (the log names the 403).
* **Scrape path:** ``by_ip`` is a dictionary read in EndpointIndex; the API is only ever
  called from the follower threads.
* **stop() is prompt:** each follower's in-flight response socket is shut down, which
  unblocks its read at once; then the threads are joined for at most ``STOP_WAIT``.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from retinad import __version__
from retinad.errors import ConfigError
from retinad.model import Endpoint
from retinad.resolvers import kube_workload as kw
from retinad.resolvers.base import IPAddress, ResolverContext
from retinad.resolvers.follow import Backoff
from retinad.resolvers.index import Claim, EndpointIndex
from retinad.resolvers.kube_http import lister
from retinad.resolvers.kube_watch import OnEvent, OnList, ResourceFollower

KEY = "[resolvers.kubernetes].kubeconfig"
NODE_NAME_ENV = "NODE_NAME"
"""Where a DaemonSet puts the node's name (downward API ``spec.nodeName``): with
hostNetwork the host name is usually, but not always, the node's name."""
STOP_WAIT = 0.8
POD, SVC = "pod/", "svc/"

_MISSING = object()


class KubernetesResolver:
    """Pods (and Services in cluster scope) by IP, kept current by API watches."""

    name = "kubernetes"

    def __init__(
        self,
        api: Any,
        *,
        node_name: str,
        cluster_scope: bool,
        logger: logging.Logger | None = None,
        on_change: Callable[[], None] | None = None,
        backoff: Callable[[], Backoff] | None = None,
        watch_timeout: int | None = None,
    ) -> None:
        self._api = api
        self.node_name = node_name
        self.cluster_scope = cluster_scope
        self._log = logger or logging.getLogger("retinad.resolvers.kubernetes")
        self._index = EndpointIndex(on_change)
        self._lock = threading.Lock()  # the tables below; taken before the index's lock
        self._pods: dict[str, kw.PodRecord] = {}
        self._pods_by_owner: dict[str, set[str]] = {}  # ReplicaSet/Job uid -> pod uids
        self._parents: dict[str, dict[str, str | None]] = {"ReplicaSet": {}, "Job": {}}
        self._apiservers: list[tuple[IPAddress, int]] = []

        # Raw GETs, not k8s_client.CoreV1Api & co.: those cost 27 MiB (kube_http.py).
        pods = lister(api, "/api/v1/pods")
        if not cluster_scope:
            pods = lister(api, "/api/v1/pods", field_selector=f"spec.nodeName={node_name}")
        make = functools.partial(ResourceFollower, logger=self._log, watch_timeout=watch_timeout)
        new_backoff = backoff or Backoff
        specs: list[tuple[str, Callable[..., Any], OnList, OnEvent, bool]] = [
            ("pods", pods, self._pods_listed, self._pod_event, False),
            (
                "replicasets",
                lister(api, "/apis/apps/v1/replicasets"),
                functools.partial(self._parents_listed, "ReplicaSet"),
                functools.partial(self._parent_event, "ReplicaSet"),
                True,
            ),
            (
                "jobs",
                lister(api, "/apis/batch/v1/jobs"),
                functools.partial(self._parents_listed, "Job"),
                functools.partial(self._parent_event, "Job"),
                True,
            ),
            (
                "apiserver",
                lister(
                    api,
                    "/api/v1/namespaces/default/endpoints",
                    field_selector="metadata.name=kubernetes",
                ),
                self._apiserver_listed,
                self._apiserver_event,
                False,
            ),
        ]
        if cluster_scope:
            specs.append(
                (
                    "services",
                    lister(api, "/api/v1/services"),
                    self._services_listed,
                    self._service_event,
                    False,
                )
            )
        self.resources: dict[str, ResourceFollower] = {
            name: make(
                name,
                call,
                on_list=on_list,
                on_event=on_event,
                metadata_only=meta_only,
                backoff=new_backoff(),
            )
            for name, call, on_list, on_event, meta_only in specs
        }

    # --- Resolver protocol ------------------------------------------------------------

    def start(self) -> None:
        scope = "cluster" if self.cluster_scope else f"node {self.node_name!r}"
        self._log.info("kubernetes: following %s (scope %s)", ", ".join(self.resources), scope)
        for r in self.resources.values():
            r.follower.start()

    def stop(self) -> None:
        for r in self.resources.values():
            r.follower.stopping.set()
            r.interrupt()
        deadline = time.monotonic() + STOP_WAIT
        for r in self.resources.values():
            r.follower.stop(timeout=max(0.0, deadline - time.monotonic()))
        self._api.close()

    def by_ip(self, ip: IPAddress) -> Endpoint | None:
        return self._index.by_ip(ip)

    def by_ifindex(self, ifindex: int) -> Endpoint | None:
        return None  # pods are found by address; their veths are the host resolver's

    @property
    def up(self) -> bool:
        return all(r.follower.up for r in self.resources.values())

    @property
    def alive(self) -> bool:
        return all(r.follower.alive for r in self.resources.values())

    def size(self) -> int:
        return len(self._index)

    def wait_up(self, timeout: float) -> bool:
        """Block until every resource is in sync, or ``timeout`` (start-up logs, tests)."""
        deadline = time.monotonic() + timeout
        return all(
            r.follower.wait_up(max(0.0, deadline - time.monotonic()))
            for r in self.resources.values()
        )

    def apiserver_addresses(self) -> list[tuple[IPAddress, int]]:
        """The API servers (address, port), from the watched ``default/kubernetes`` Endpoints."""
        with self._lock:
            return list(self._apiservers)

    # --- pods (pods follower) ---------------------------------------------------------

    def _pods_listed(self, items: list[Mapping[str, Any]]) -> None:
        records = [r for r in map(kw.parse_pod, items) if r is not None]
        with self._lock:
            self._pods, self._pods_by_owner = {}, {}
            claims: dict[str, Claim] = {}
            for rec in records:
                self._remember(rec)
                claim = self._claim(rec)
                if claim is not None:
                    claims[POD + rec.uid] = claim
            self._replace(POD, claims)

    def _pod_event(self, kind: str, obj: Mapping[str, Any]) -> None:
        rec = kw.parse_pod(obj)
        if rec is None:
            return
        with self._lock:
            self._forget(rec.uid)
            if kind == "DELETED":
                self._index.remove(POD + rec.uid)
            else:
                self._remember(rec)
                self._apply(rec)

    def _remember(self, rec: kw.PodRecord) -> None:
        self._pods[rec.uid] = rec
        if rec.owner is not None and rec.owner.kind in self._parents:
            self._pods_by_owner.setdefault(rec.owner.uid, set()).add(rec.uid)

    def _forget(self, uid: str) -> None:
        old = self._pods.pop(uid, None)
        if old is not None and old.owner is not None:
            pods = self._pods_by_owner.get(old.owner.uid)
            if pods is not None:
                pods.discard(uid)
                if not pods:
                    del self._pods_by_owner[old.owner.uid]

    def _claim(self, rec: kw.PodRecord) -> Claim | None:
        if not rec.ips:
            return None
        return Claim.of(kw.pod_endpoint(rec, self._parents), rec.ips)

    def _apply(self, rec: kw.PodRecord) -> None:
        claim = self._claim(rec)
        if claim is None:
            self._index.remove(POD + rec.uid)
        else:
            self._index.put(POD + rec.uid, claim)

    def _replace(self, prefix: str, claims: Mapping[str, Claim]) -> None:
        """Make ``claims`` the index's whole set of ``prefix`` owners; others stay."""
        merged = {o: c for o, c in self._index.owners().items() if not o.startswith(prefix)}
        merged.update(claims)
        self._index.replace_all(merged)

    # --- ReplicaSets and Jobs (their followers) ---------------------------------------

    def _parents_listed(self, kind: str, items: list[Mapping[str, Any]]) -> None:
        parent_kind = kw.PARENT_KINDS[kind]
        table = {kw.uid_of(o): kw.parent_name(o, parent_kind) for o in items if kw.uid_of(o)}
        with self._lock:
            old, self._parents[kind] = self._parents[kind], table
            changed = {
                uid
                for uid in old.keys() | table.keys()
                if old.get(uid, _MISSING) != table.get(uid, _MISSING)
            }
            self._reattribute(changed)

    def _parent_event(self, kind: str, event: str, obj: Mapping[str, Any]) -> None:
        uid = kw.uid_of(obj)
        if not uid:
            return
        with self._lock:
            table = self._parents[kind]
            before = table.get(uid, _MISSING)
            if event == "DELETED":
                table.pop(uid, None)
            else:
                table[uid] = kw.parent_name(obj, kw.PARENT_KINDS[kind])
            if table.get(uid, _MISSING) != before:
                self._reattribute({uid})

    def _reattribute(self, owner_uids: set[str]) -> None:
        for owner in owner_uids:
            for uid in self._pods_by_owner.get(owner, ()):
                self._apply(self._pods[uid])

    # --- Services (cluster scope) -----------------------------------------------------

    def _services_listed(self, items: list[Mapping[str, Any]]) -> None:
        claims: dict[str, Claim] = {}
        for obj in items:
            uid, ips = kw.uid_of(obj), kw.service_ips(obj)
            if uid and ips:
                claims[SVC + uid] = Claim.of(kw.service_endpoint(obj), ips)
        with self._lock:
            self._replace(SVC, claims)

    def _service_event(self, kind: str, obj: Mapping[str, Any]) -> None:
        uid, ips = kw.uid_of(obj), kw.service_ips(obj)
        if not uid:
            return
        with self._lock:
            if kind == "DELETED" or not ips:
                self._index.remove(SVC + uid)
            else:
                self._index.put(SVC + uid, Claim.of(kw.service_endpoint(obj), ips))

    # --- the API server's own Endpoints -----------------------------------------------

    def _apiserver_listed(self, items: list[Mapping[str, Any]]) -> None:
        addresses = kw.endpoint_addresses(items[0]) if items else []
        with self._lock:
            self._apiservers = addresses

    def _apiserver_event(self, kind: str, obj: Mapping[str, Any]) -> None:
        addresses = [] if kind == "DELETED" else kw.endpoint_addresses(obj)
        with self._lock:
            self._apiservers = addresses


def load_api_client(kubeconfig: str) -> Any:
    """An ApiClient from the kubeconfig file, or from the pod's service account when "".

    Raises ConfigError naming the key and the file; never contacts the API server.
    """
    cfg = k8s_client.Configuration()
    if kubeconfig:
        try:
            with open(kubeconfig, "rb"):
                pass
        except OSError as err:
            raise ConfigError(f"{KEY}: cannot read {kubeconfig}: {err.strerror or err}") from err
        try:
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, client_configuration=cfg, persist_config=False
            )
        except Exception as err:  # the loader raises ConfigException, YAML, Key, Type errors
            raise ConfigError(f"{KEY}: {kubeconfig} is not a usable kubeconfig: {err}") from err
    else:
        try:
            k8s_config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        except Exception as err:
            raise ConfigError(
                f'{KEY} is "" (use the pod\'s service account), but no in-cluster '
                f"configuration is available ({err}): set it to a kubeconfig file"
            ) from err
    # No urllib3-level retries: a failed request ends the session and the Follower's
    # backoff decides when to try again (urllib3 would retry 3 times at once, and log
    # each retry as a warning).
    cfg.retries = False
    api = k8s_client.ApiClient(cfg)
    api.user_agent = f"retinad/{__version__}"
    return api


def node_name(configured: str) -> str:
    """The configured name, else $NODE_NAME, else the host name as kubelet registers it."""
    return (
        configured
        or os.environ.get(NODE_NAME_ENV, "").strip()
        or socket.gethostname().strip().lower()
    )


def create(
    ctx: ResolverContext,
    *,
    backoff: Callable[[], Backoff] | None = None,
    watch_timeout: int | None = None,
) -> KubernetesResolver:
    """The resolver [resolvers.kubernetes] describes; ``backoff`` and ``watch_timeout``
    (seconds) override the reconnect and watch-renewal pace (tests)."""
    ks = ctx.settings.resolvers.kubernetes
    scope = ks.scope
    if scope == "auto":
        scope = "cluster" if ctx.settings.packetparser.remote_context else "node"
    return KubernetesResolver(
        load_api_client(ks.kubeconfig),
        node_name=node_name(ks.node_name),
        cluster_scope=scope == "cluster",
        logger=ctx.logger,
        on_change=ctx.on_change,
        backoff=backoff,
        watch_timeout=watch_timeout,
    )
