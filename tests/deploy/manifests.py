"""deploy/kubernetes/ as the tests read and apply it (server-side apply, as kubectl does)."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy" / "kubernetes"
FIELD_MANAGER = "retinad-test"

Doc = dict[str, Any]


def load(name: str) -> list[Doc]:
    """The YAML documents of deploy/kubernetes/<name>, in file order."""
    with (DEPLOY / name).open() as f:
        return [d for d in yaml.safe_load_all(f) if d]


def kustomization() -> Doc:
    docs = load("kustomization.yaml")
    assert len(docs) == 1
    return docs[0]


def kustomized() -> list[Doc]:
    """Every object kustomization.yaml's resources list, in that order."""
    return [d for name in kustomization()["resources"] for d in load(name)]


def find(docs: Iterable[Doc], kind: str, name: str | None = None) -> Doc:
    hits = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(hits) == 1, f"{len(hits)} {kind} {name or ''} in the manifests"
    return hits[0]


def cluster_role_without(docs: Iterable[Doc], resource: str, *, name: str) -> Doc:
    """The ClusterRole of the manifests, renamed, with the rule for ``resource`` removed."""
    role = copy.deepcopy(find(docs, "ClusterRole", "retinad"))
    before = len(role["rules"])
    role["rules"] = [r for r in role["rules"] if resource not in r["resources"]]
    assert len(role["rules"]) == before - 1, f"no rule of its own for {resource}"
    role["metadata"]["name"] = name
    return role


class Applier:
    """Server-side apply through the dynamic client (discovery maps kind -> REST path)."""

    def __init__(self, api: Any) -> None:
        from kubernetes.dynamic import DynamicClient

        self._dyn = DynamicClient(api)

    def resource(self, doc: Doc) -> Any:
        return self._dyn.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])

    def apply(self, doc: Doc, *, dry_run: bool = False) -> Any:
        kwargs: dict[str, Any] = {"field_manager": FIELD_MANAGER, "force_conflicts": True}
        if dry_run:
            kwargs["dry_run"] = "All"
        return self._dyn.server_side_apply(
            self.resource(doc),
            body=doc,
            namespace=doc["metadata"].get("namespace"),
            **kwargs,
        )

    def apply_all(self, docs: Iterable[Doc], *, dry_run: bool = False) -> Iterator[Any]:
        for doc in docs:
            yield self.apply(doc, dry_run=dry_run)

    def exists(self, doc: Doc) -> bool:
        from kubernetes.dynamic.exceptions import NotFoundError

        try:
            self.resource(doc).get(
                name=doc["metadata"]["name"], namespace=doc["metadata"].get("namespace")
            )
        except NotFoundError:
            return False
        return True
