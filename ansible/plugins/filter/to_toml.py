"""to_toml: render a dict as TOML, for retinad's retinad.toml.

Ansible ships to_yaml/to_json but no TOML filter, and the controller cannot be assumed to
have a TOML writer (tomli-w) installed, so the role carries this small one. It writes only
what retinad's config uses: tables, arrays of tables, arrays, strings, integers, floats and
booleans; anything else (None, dates, sets) is refused with the key that holds it, so a
typo in an inventory fails on the controller instead of on the host.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

DOCUMENTATION = r"""
name: to_toml
short_description: Render a dict as TOML
description:
  - Tables, arrays of tables, arrays, strings, integers, floats and booleans.
  - None and other types are refused with the path of the key.
positional: _input
options:
  _input:
    description: The dict to render.
    type: dict
    required: true
"""

EXAMPLES = r"""
config: "{{ {'web': {'listen_address': [':10095']}} | retinad.retinad.to_toml }}"
"""

RETURN = r"""
_value:
  description: The TOML text.
  type: str
"""

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


class TomlRenderError(ValueError):
    """A value TOML (or retinad) cannot hold, with the dotted path of its key."""


def _key(name: Any) -> str:
    text = str(name)
    return text if _BARE_KEY.match(text) else _string(text)


def _string(text: str) -> str:
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _is_table(value: Any) -> bool:
    return isinstance(value, Mapping)


def _is_table_array(value: Any) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, (str, bytes))
        and len(value) > 0
        and all(_is_table(v) for v in value)
    )


def _scalar(value: Any, path: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise TomlRenderError(f"{path}: {value!r} is not a finite number")
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, Sequence) and not isinstance(value, bytes):
        if any(_is_table(v) for v in value):
            raise TomlRenderError(f"{path}: an array mixes tables and values")
        return "[" + ", ".join(_scalar(v, f"{path}[{i}]") for i, v in enumerate(value)) + "]"
    if value is None:
        raise TomlRenderError(f"{path}: null has no TOML form (remove the key instead)")
    raise TomlRenderError(f"{path}: {type(value).__name__} has no TOML form")


def _table(table: Mapping[Any, Any], prefix: list[str], lines: list[str]) -> None:
    scalars = [(k, v) for k, v in table.items() if not _is_table(v) and not _is_table_array(v)]
    tables = [(k, v) for k, v in table.items() if _is_table(v)]
    arrays = [(k, v) for k, v in table.items() if _is_table_array(v)]
    for k, v in scalars:
        lines.append(f"{_key(k)} = {_scalar(v, '.'.join([*prefix, str(k)]))}")
    for k, v in tables:
        path = [*prefix, _key(k)]
        if lines:
            lines.append("")
        lines.append("[" + ".".join(path) + "]")
        _table(v, path, lines)
    for k, items in arrays:
        path = [*prefix, _key(k)]
        for item in items:
            if lines:
                lines.append("")
            lines.append("[[" + ".".join(path) + "]]")
            _table(item, path, lines)


def to_toml(data: Any) -> str:
    """Render ``data`` (a dict) as TOML text ending in a newline."""
    if not _is_table(data):
        raise TomlRenderError(f"to_toml expects a dict, got {type(data).__name__}")
    lines: list[str] = []
    _table(data, [], lines)
    return "\n".join(lines) + "\n"


class FilterModule:
    """Ansible's entry point for the filters of this file."""

    def filters(self) -> dict[str, Any]:
        return {"to_toml": to_toml}
