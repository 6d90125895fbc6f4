"""The docs and the embedded default config say what the program does: every schema key in
retinad/default.toml with a comment, every bound in CONFIG.md, every flag in README real.
(tests/unit/test_config.py keeps a CONFIG.md row per key; test_metrics_doc.py the metrics
and map names.)"""

from __future__ import annotations

import dataclasses
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from retinad.cli import build_parser
from retinad.config.schema import Settings

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TOML = (ROOT / "retinad" / "default.toml").read_text()
CONFIG_DOC = (ROOT / "docs" / "CONFIG.md").read_text()
README = (ROOT / "README.md").read_text()


def schema_keys(cls: type = Settings, table: tuple[str, ...] = ()) -> Iterator[Any]:
    """(table path, field) for every key; sub-tables are walked, not yielded."""
    for f in dataclasses.fields(cls):
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            yield from schema_keys(type(default), (*table, f.name))
        else:
            yield table, f


def test_default_toml_spells_out_every_key_with_a_comment() -> None:
    data = tomllib.loads(DEFAULT_TOML)
    missing = []
    for table, f in schema_keys():
        section: Any = data
        for t in table:
            section = section.get(t, {})
        if f.name not in section:
            missing.append(f"[{'.'.join(table)}].{f.name}")
    assert missing == [], "keys missing from retinad/default.toml"
    # each key line is preceded by a comment line saying what it does
    lines = DEFAULT_TOML.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^[a-z_]+ = ", line):
            assert lines[i - 1].startswith("#"), f"default.toml: {line!r} has no comment"


def bounded_keys() -> list[tuple[str, str, int, int]]:
    return [
        (".".join(table), f.name, f.metadata["min"], f.metadata["max"])
        for table, f in schema_keys()
        if "min" in f.metadata
    ]


@pytest.mark.parametrize(("table", "key", "lo", "hi"), bounded_keys())
def test_config_doc_gives_every_range(table: str, key: str, lo: int, hi: int) -> None:
    """The range the loader enforces is the one CONFIG.md states, on the key's row."""
    section = CONFIG_DOC.split(f"`[{table}]`", 1)[1]
    row = next(r for r in section.splitlines() if r.startswith(f"| `{key}` |"))
    assert f"({lo} to {hi}" in row, f"[{table}].{key}: CONFIG.md row lacks ({lo} to {hi})"


def test_default_toml_gives_every_range() -> None:
    for table, key, lo, hi in bounded_keys():
        block = DEFAULT_TOML.split(f"[{table}]\n", 1)[1].split(f"\n{key} = ", 1)[0]
        comment = []
        for line in reversed(block.splitlines()):  # the comment lines just above the key
            if not line.startswith("#"):
                break
            comment.insert(0, line)
        where = f"default.toml [{table}].{key}"
        assert f"({lo} to {hi}" in " ".join(comment), f"{where}: no ({lo} to {hi}) in its comment"


def test_readme_flags_exist() -> None:
    """Every ``make run ARGS="..."`` and ``retinad ...`` line in README parses."""
    examples = re.findall(r'ARGS="([^"]*)"', README)
    assert examples, "README has no make run ARGS example"
    parser = build_parser()
    for args in examples:
        if args == "...":
            continue
        parser.parse_args(shlex.split(args))  # SystemExit(2) on an unknown flag


def test_readme_names_every_command() -> None:
    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert commands is not None
    for command in commands:
        assert f"retinad {command}" in README or command == "run", command
