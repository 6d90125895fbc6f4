"""Who a Docker container is: the docker resolver's mapping from the engine's inspect JSON
to an Endpoint and what it claims. Pure functions over untrusted JSON (unit-testable with
literal dicts); the rules are in docker.py's module docstring."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from retinad.model import Endpoint
from retinad.resolvers.base import IPAddress

COMPOSE_PROJECT = "com.docker.compose.project"
COMPOSE_SERVICE = "com.docker.compose.service"

Inspect = Mapping[str, Any]
"""A container as ``GET /containers/{id}/json`` returns it (untrusted JSON)."""


def as_dict(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def as_str(value: object) -> str:
    return value if isinstance(value, str) else ""


def container_labels(info: Inspect) -> Mapping[str, str]:
    labels = as_dict(as_dict(info.get("Config")).get("Labels"))
    return MappingProxyType(
        {k: v for k, v in labels.items() if isinstance(k, str) and isinstance(v, str)}
    )


def container_name(info: Inspect) -> str:
    name = as_str(info.get("Name"))
    return name[1:] if name.startswith("/") else name


def endpoint_of(info: Inspect) -> Endpoint:
    """The endpoint a container is (see the module docstring); strings pass through."""
    labels = container_labels(info)
    name = container_name(info)
    service = labels.get(COMPOSE_SERVICE, "")
    return Endpoint(
        namespace=labels.get(COMPOSE_PROJECT, ""),
        name=name,
        workload_kind="compose_service" if service else "container",
        workload_name=service or name,
        labels=labels,
    )


def network_mode(info: Inspect) -> str:
    return as_str(as_dict(info.get("HostConfig")).get("NetworkMode"))


def has_own_netns(info: Inspect) -> bool:
    """False for --net=host (the host's namespace), --net=none and --net=container:X."""
    mode = network_mode(info)
    return mode not in ("host", "none") and not mode.startswith("container:")


def container_ips(info: Inspect) -> list[IPAddress]:
    """Every IPv4 and IPv6 address the container has, on every network it is attached to."""
    ips: list[IPAddress] = []
    networks = as_dict(as_dict(info.get("NetworkSettings")).get("Networks"))
    for net in networks.values():
        for key in ("IPAddress", "GlobalIPv6Address"):
            text = as_str(as_dict(net).get(key))
            if not text:
                continue
            try:
                ips.append(ipaddress.ip_address(text))
            except ValueError:
                continue
    return ips


def running_pid(info: Inspect) -> int:
    state = as_dict(info.get("State"))
    pid = state.get("Pid")
    if state.get("Running") is not True or not isinstance(pid, int) or pid <= 0:
        return 0
    return pid
