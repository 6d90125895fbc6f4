"""What the kubernetes resolver keeps of an API object, and how a pod gets its workload.

Objects arrive as the API server's JSON (plain dicts, never the client's models: parsing a
pod into pydantic models costs far more than the few fields kept here). Everything in
this module is a pure function of those dicts, so it is tested without a cluster.

Workload rules (a pod's *controller* owner reference, the one with ``controller: true``;
other owner references only drive garbage collection and name no workload):

* no controller                      -> ("Pod", pod name)
* ReplicaSet owned by a Deployment   -> ("Deployment", deployment name)
* ReplicaSet owned by anything else  -> ("ReplicaSet", replicaset name)
* Job owned by a CronJob             -> ("CronJob", cronjob name)
* Job owned by anything else         -> ("Job", job name)
* Node (a static pod's mirror)       -> ("Pod", pod name): a node is not a workload
* anything else (StatefulSet, DaemonSet, ReplicationController, custom kinds)
                                     -> (that kind, that name)

A ReplicaSet or Job the resolver has not seen yet (its watch lags the pod watch, or is not
in sync yet) is guessed: the Deployment controller names a ReplicaSet
``<deployment>-<pod-template-hash>`` and copies the hash into the pod's
``pod-template-hash`` label, so a matching suffix names the Deployment; otherwise the
ReplicaSet or Job itself is the workload until its owner is known.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from retinad.model import Endpoint
from retinad.resolvers.base import IPAddress

FINISHED_PHASES = frozenset({"Succeeded", "Failed"})
"""A pod in these phases has given its IP back: Kubernetes hands it to the next pod."""

POD_TEMPLATE_HASH = "pod-template-hash"

# What the owner of a ReplicaSet / Job must be for the pod to be named after it.
PARENT_KINDS = {"ReplicaSet": "Deployment", "Job": "CronJob"}


@dataclass(frozen=True)
class OwnerRef:
    kind: str
    name: str
    uid: str


@dataclass(frozen=True)
class PodRecord:
    """The part of a pod the resolver keeps."""

    uid: str
    namespace: str
    name: str
    owner: OwnerRef | None
    ips: frozenset[IPAddress]
    """Empty when the pod claims no address (host network, finished, no IP yet)."""
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def metadata(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return _mapping(obj.get("metadata"))


def uid_of(obj: Mapping[str, Any]) -> str:
    return _str(metadata(obj).get("uid"))


def controller_ref(meta: Mapping[str, Any]) -> OwnerRef | None:
    """The owner reference with ``controller: true``, if any."""
    refs = meta.get("ownerReferences")
    if not isinstance(refs, list):
        return None
    for ref in refs:
        if isinstance(ref, Mapping) and ref.get("controller") is True:
            kind, name = _str(ref.get("kind")), _str(ref.get("name"))
            if kind and name:
                return OwnerRef(kind, name, _str(ref.get("uid")))
    return None


def _ips(values: list[Any]) -> frozenset[IPAddress]:
    out: set[IPAddress] = set()
    for v in values:
        try:
            out.add(ipaddress.ip_address(v))
        except ValueError:  # "", "None" (headless service) or garbage: claims nothing
            continue
    return frozenset(out)


def parse_pod(obj: Mapping[str, Any]) -> PodRecord | None:
    """A pod as the resolver keeps it; None without a uid (not an API object)."""
    meta = metadata(obj)
    uid = _str(meta.get("uid"))
    if not uid:
        return None
    spec, status = _mapping(obj.get("spec")), _mapping(obj.get("status"))
    ips: frozenset[IPAddress] = frozenset()
    # Host-network pods carry the node's address: that address is the node's, not theirs.
    if spec.get("hostNetwork") is not True and status.get("phase") not in FINISHED_PHASES:
        raw = [status.get("podIP")]
        pod_ips = status.get("podIPs")
        if isinstance(pod_ips, list):
            raw += [_mapping(p).get("ip") for p in pod_ips]
        ips = _ips([r for r in raw if isinstance(r, str)])
    labels = _mapping(meta.get("labels"))
    return PodRecord(
        uid=uid,
        namespace=_str(meta.get("namespace")),
        name=_str(meta.get("name")),
        owner=controller_ref(meta),
        ips=ips,
        labels=MappingProxyType({str(k): str(v) for k, v in labels.items()}),
    )


def service_ips(obj: Mapping[str, Any]) -> frozenset[IPAddress]:
    """A Service's ClusterIPs, v4 and v6 (none for headless and ExternalName services)."""
    spec = _mapping(obj.get("spec"))
    raw: list[Any] = [spec.get("clusterIP")]
    cluster_ips = spec.get("clusterIPs")
    if isinstance(cluster_ips, list):
        raw += cluster_ips
    return _ips([r for r in raw if isinstance(r, str)])


def service_endpoint(obj: Mapping[str, Any]) -> Endpoint:
    meta = metadata(obj)
    name = _str(meta.get("name"))
    return Endpoint(
        namespace=_str(meta.get("namespace")),
        name=name,
        workload_kind="Service",
        workload_name=name,
    )


def parent_name(obj: Mapping[str, Any], parent_kind: str) -> str | None:
    """For a ReplicaSet (Job): the name of its controller when that is a ``parent_kind``
    (Deployment, CronJob), else None. Reads metadata only, so a metadata-only object
    (PartialObjectMetadata) does as well as the full one."""
    ref = controller_ref(metadata(obj))
    return ref.name if ref is not None and ref.kind == parent_kind else None


Parents = Mapping[str, Mapping[str, str | None]]
"""Owner kind ("ReplicaSet", "Job") -> uid of a known object of that kind -> the name of
its Deployment / CronJob (None: known, with no such owner). A uid absent from it is an
object not known (yet)."""


def workload(pod: PodRecord, parents: Parents) -> tuple[str, str]:
    """(workload_kind, workload_name) of ``pod`` (rules in the module docstring)."""
    owner = pod.owner
    if owner is None or owner.kind == "Node":
        return "Pod", pod.name
    parent_kind = PARENT_KINDS.get(owner.kind)
    if parent_kind is None:
        return owner.kind, owner.name
    known = parents.get(owner.kind, {})
    if owner.uid in known:
        parent = known[owner.uid]
        return (parent_kind, parent) if parent else (owner.kind, owner.name)
    if owner.kind == "ReplicaSet":
        h = pod.labels.get(POD_TEMPLATE_HASH, "")
        if h and owner.name.endswith("-" + h) and len(owner.name) > len(h) + 1:
            return "Deployment", owner.name[: -len(h) - 1]
    return owner.kind, owner.name


def pod_endpoint(pod: PodRecord, parents: Parents) -> Endpoint:
    kind, name = workload(pod, parents)
    return Endpoint(
        namespace=pod.namespace,
        name=pod.name,
        workload_kind=kind,
        workload_name=name,
        labels=pod.labels,
    )


def endpoint_addresses(obj: Mapping[str, Any]) -> list[tuple[IPAddress, int]]:
    """(address, port) pairs of an Endpoints object's ready addresses, in API order.

    For the ``kubernetes`` Endpoints that is every API server and its secure port; a port
    named "https" is preferred when a subset lists several.
    """
    out: list[tuple[IPAddress, int]] = []
    subsets = obj.get("subsets")
    for subset in subsets if isinstance(subsets, list) else []:
        sub = _mapping(subset)
        raw_ports = sub.get("ports")
        ports = [
            _mapping(p)
            for p in (raw_ports if isinstance(raw_ports, list) else [])
            if _mapping(p).get("protocol", "TCP") == "TCP"
            and isinstance(_mapping(p).get("port"), int)
        ]
        https = [p for p in ports if p.get("name") == "https"]
        numbers = [int(p["port"]) for p in (https or ports)]
        addresses = sub.get("addresses")
        for addr in addresses if isinstance(addresses, list) else []:
            try:
                ip = ipaddress.ip_address(_str(_mapping(addr).get("ip")))
            except ValueError:
                continue
            out.extend((ip, port) for port in numbers)
    return out
