"""The kube-apiserver's fault proxy, kept under its old name for test_kubernetes.py: it
lives in fault_proxy.py beside the unix-socket one the docker and containerd tests use."""

from __future__ import annotations

from tests.resolvers.fault_proxy import FaultProxy

__all__ = ["FaultProxy"]
