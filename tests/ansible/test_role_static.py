"""The Ansible role's parts that need no managed host: argument specs and the TOML filter.

The molecule scenarios (make test-ansible) converge real systemd containers; these checks
run in make test so a default without a spec, or a filter that writes TOML retinad rejects,
fails in seconds.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "ansible" / "roles" / "retinad"


def load_filter() -> ModuleType:
    path = ROOT / "ansible" / "plugins" / "filter" / "to_toml.py"
    spec = importlib.util.spec_from_file_location("retinad_role_to_toml", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


to_toml_module = load_filter()
to_toml = to_toml_module.to_toml


def test_argument_specs_list_exactly_the_defaults() -> None:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    specs = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    assert sorted(options) == sorted(defaults)
    for name, spec in options.items():
        assert spec["default"] == defaults[name], name
        assert spec.get("description"), name
        assert spec.get("type") in {"str", "list", "dict", "bool", "int"}, name


def test_every_variable_has_the_role_prefix() -> None:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    assert all(name.startswith("retinad_") for name in defaults)


CONFIG: dict[str, Any] = {
    "web": {
        "listen_address": [":10095", "[::1]:10096"],
        "telemetry_path": "/metrics",
        "config_file": "/etc/retinad/web-config.yml",
    },
    "metrics": {"mode": "advanced", "ip_label": True},
    "resolvers": {
        "order": ["static", "host"],
        "grace_period_seconds": 60,
        "static": {
            "endpoints": [
                {"cidr": "10.0.3.0/24", "name": 'db "primary"\\subnet'},
                {"cidr": "fd00:3::/64", "name": "名前", "labels": {"team": "data", "x.y": "z"}},
            ]
        },
    },
    "dropreason": {"enabled": False},
}


def test_to_toml_round_trips() -> None:
    assert tomllib.loads(to_toml(CONFIG)) == CONFIG


def test_to_toml_output_is_accepted_by_check_config(tmp_path: Path) -> None:
    (tmp_path / "web-config.yml").write_text("basic_auth_users: {}\n")
    config = {**CONFIG, "web": {**CONFIG["web"], "config_file": str(tmp_path / "web-config.yml")}}
    path = tmp_path / "retinad.toml"
    path.write_text(to_toml(config))
    done = subprocess.run(
        [sys.executable, "-m", "retinad", "check-config", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"web": {"config_file": None}}, "web.config_file: null has no TOML form"),
        ({"metrics": {"x": float("nan")}}, "metrics.x: nan is not a finite number"),
        ({"a": [1, {"b": 2}]}, "a: an array mixes tables and values"),
        ({"a": {"b": {1, 2}}}, "a.b: set has no TOML form"),
    ],
)
def test_to_toml_refuses_with_the_key(value: dict[str, Any], message: str) -> None:
    with pytest.raises(to_toml_module.TomlRenderError, match=message.replace("[", r"\[")):
        to_toml(value)


def test_to_toml_escapes_control_characters() -> None:
    text = to_toml({"name": "a\nb\t\x01\x7f"})
    assert text == 'name = "a\\nb\\t\\u0001\\u007F"\n'
    assert tomllib.loads(text) == {"name": "a\nb\t\x01\x7f"}
