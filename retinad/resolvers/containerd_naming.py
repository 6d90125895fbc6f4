"""Who a containerd task's network namespace is: the containerd resolver's naming rules.

Names come from labels: the CRI's ``io.kubernetes.pod.{namespace,name}`` give
Endpoint(namespace=<pod namespace>, name=<pod>, workload_kind="Pod", workload_name=<pod>)
(the kubernetes resolver, when configured first, knows the owners better); any other
container gives Endpoint(namespace=<containerd namespace>, name=<container id>,
workload_kind="container", workload_name=<image, else the container id>).

One claim per network namespace, owned by ``net:[<inode>]`` (as ``readlink`` shows it):
the containers of a pod share the sandbox's namespace, and the sandbox
(``io.cri-containerd.kind=sandbox``), else the oldest container, names it.
"""

from __future__ import annotations

from dataclasses import dataclass

from retinad.kernel.netns import NsKey
from retinad.model import Endpoint
from retinad.resolvers.containerd_api.services.containers.v1 import containers_pb2

POD_NAME = "io.kubernetes.pod.name"
POD_NAMESPACE = "io.kubernetes.pod.namespace"
CRI_KIND = "io.cri-containerd.kind"


@dataclass(frozen=True)
class Member:
    """One live task and the namespace it runs in."""

    namespace: str
    """containerd namespace."""
    cid: str
    netns: NsKey
    endpoint: Endpoint
    sandbox: bool
    created: tuple[int, int]

    def rank(self) -> tuple[bool, tuple[int, int], str, str]:
        """Lowest names the namespace: the sandbox, else the oldest container."""
        return (not self.sandbox, self.created, self.namespace, self.cid)


def endpoint_of(namespace: str, container: containers_pb2.Container) -> tuple[Endpoint, bool]:
    """The endpoint a container names, and whether it is a CRI pod sandbox."""
    labels = dict(container.labels)
    pod, pod_ns = labels.get(POD_NAME), labels.get(POD_NAMESPACE)
    if pod and pod_ns:
        ep = Endpoint(namespace=pod_ns, name=pod, workload_kind="Pod", workload_name=pod)
        return ep, labels.get(CRI_KIND) == "sandbox"
    ep = Endpoint(
        namespace=namespace,
        name=container.id,
        workload_kind="container",
        workload_name=container.image or container.id,
    )
    return ep, False


def owner_of(key: NsKey) -> str:
    return f"net:[{key[1]}]"
