"""The import contract of retinad's layers (docs/DESIGN.md, "Code layout and layering").

Read from the source's AST, so lazy imports inside functions count too. A small test of
our own rather than import-linter: the whole contract is the table below, it needs no
extra tool in CI, and a violation names the file, line and import.

Layers, lowest first; a module may import its own package and any lower layer, never a
higher one, and the packages of one layer never import each other:

    0  retinad (the package: __version__), errors, model, metric_names, logs
    1  config/
    2  kernel/
    3  exporter/ | resolvers/      (not each other)
    4  plugins/ | top/ | flows/    (not each other; top/ and flows/ are clients of a
                                  running daemon)
    5  daemon/
    6  cli
    7  __main__
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "retinad"

LAYER: dict[str, int] = {
    "retinad": 0,
    "errors": 0,
    "model": 0,
    "metric_names": 0,
    "logs": 0,
    "config": 1,
    "kernel": 2,
    "exporter": 3,
    "resolvers": 3,
    "plugins": 4,
    "top": 4,
    "flows": 4,
    "daemon": 5,
    "cli": 6,
    "__main__": 7,
}
"""Top-level module or package of retinad -> its layer."""


def unit_of(module: str) -> str:
    """``retinad.kernel.maps`` -> ``kernel``; ``retinad`` -> ``retinad``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, imported retinad module) for every import statement in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("retinad")]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import"
            mod = node.module or ""
            if mod == "retinad":  # from retinad import errors / __version__
                found += [(node.lineno, f"retinad.{a.name}") for a in node.names]
            elif mod.startswith("retinad."):
                found.append((node.lineno, mod))
    return found


def violations(root: Path) -> list[str]:
    bad: list[str] = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent)
        if "containerd_api" in rel.parts:  # generated gRPC stubs
            continue
        own = unit_of(".".join(rel.with_suffix("").parts))
        for line, target in imports_of(path):
            dep = unit_of(target)
            if dep not in LAYER:  # a name of the package itself: from retinad import __version__
                dep = "retinad"
            if dep == own:
                continue
            if LAYER[dep] > LAYER[own] or (LAYER[dep] == LAYER[own] and own != "retinad"):
                bad.append(f"{rel}:{line}: {own} (layer {LAYER[own]}) imports {target}")
    return bad


def test_every_unit_has_a_layer() -> None:
    units = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()}
    units = {u for u in units if not u.startswith((".", "_")) or u == "__main__"}
    units -= {"default", "py"}  # default.toml, py.typed
    assert units - set(LAYER) == set(), "give each new module or package a layer here"


def test_imports_follow_the_layers() -> None:
    assert violations(PACKAGE) == []


@pytest.mark.parametrize(
    ("where", "source", "expected"),
    [
        ("kernel/x.py", "from retinad.plugins import base\n", "kernel (layer 2) imports"),
        ("resolvers/x.py", "from retinad.exporter import naming\n", "resolvers (layer 3)"),
        ("exporter/x.py", "def f():\n    import retinad.resolvers.host\n", "exporter (layer 3)"),
        ("config/x.py", "from retinad.kernel.maps import read\n", "config (layer 1)"),
    ],
)
def test_the_contract_can_fail(tmp_path: Path, where: str, source: str, expected: str) -> None:
    """The checker itself: each forbidden direction is reported (lazy imports too)."""
    mod = tmp_path / "retinad" / where
    mod.parent.mkdir(parents=True)
    mod.write_text(source)
    (found,) = violations(tmp_path / "retinad")
    assert found.startswith(f"retinad/{where}:") and expected in found, found


def test_one_resolver_table() -> None:
    """config.schema.RESOLVER_NAMES is the table: each name is a resolvers/ module with a
    top-level ``create``, every such module is listed, and the registry and the loader
    both read it (read from the AST, so no SDK is imported)."""
    from retinad.config.load import KNOWN_RESOLVERS
    from retinad.config.schema import RESOLVER_NAMES
    from retinad.resolvers.registry import RESOLVER_MODULES

    with_create = {
        path.stem
        for path in (PACKAGE / "resolvers").glob("*.py")
        if any(
            isinstance(node, ast.FunctionDef) and node.name == "create"
            for node in ast.parse(path.read_text()).body
        )
    }
    assert with_create == set(RESOLVER_NAMES)
    assert KNOWN_RESOLVERS is RESOLVER_NAMES
    assert {n: f"retinad.resolvers.{n}" for n in RESOLVER_NAMES} == RESOLVER_MODULES
