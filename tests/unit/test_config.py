"""Config loading: the embedded default, and bad configs refused with exact messages, exit 2."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from retinad.cli import main
from retinad.config import Settings, load_config, load_default_config

BAD_CONFIGS = [
    (
        '[packetparser.events]\ntransport = "pipe"\n',
        '[packetparser.events].transport: expected "ringbuf" or "perf", got "pipe"',
    ),
    ("[webb]\nx = 1\n", "[webb]: unknown table (did you mean 'web'?)"),
    (
        '[web]\nlisten_adress = [":1"]\n',
        "[web].listen_adress: unknown key (did you mean 'listen_address'?)",
    ),
    ("[dropreason]\nfrobnicate = true\n", "[dropreason].frobnicate: unknown key"),
    ('[web]\nlisten_address = ":10095"\n', "[web].listen_address: expected an array, got a string"),
    (
        '[web]\nlisten_address = ["::1:80"]\n',
        '[web].listen_address[0]: an IPv6 address must be in brackets, as [::1]:port, got "::1:80"',
    ),
    (
        '[web]\nlisten_address = [":80", "localhost:99999"]\n',
        "[web].listen_address[1]: port '99999' is not a number from 1 to 65535, "
        'got "localhost:99999"',
    ),
    ("[web]\nlisten_address = []\n", "[web].listen_address: expected at least one address"),
    (
        '[web]\ntelemetry_path = "metrics"\n',
        '[web].telemetry_path: expected a path starting with "/" other than "/", got "metrics"',
    ),
    ('[metrics]\nmode = "full"\n', '[metrics].mode: expected "basic" or "advanced", got "full"'),
    (
        '[metrics]\nnaming = "hubble"\n',
        '[metrics].naming: expected "prometheus" or "retina", got "hubble"',
    ),
    ('[packetparser]\nenabled = "yes"\n', '[packetparser].enabled: expected a boolean, got "yes"'),
    (
        "[packetparser]\nmax_endpoints = 10\n",
        "[packetparser].max_endpoints: expected an integer from 64 to 1048576, got 10",
    ),
    ("[dropreason]\nmax_entries = 1.5\n", "[dropreason].max_entries: expected an integer, got 1.5"),
    (
        '[packetparser]\nattach_mode = "xdp"\n',
        '[packetparser].attach_mode: expected one of "auto", "tcx", "clsact", got "xdp"',
    ),
    (
        "[packetparser.interfaces]\ninclude = [1]\n",
        "[packetparser.interfaces].include[0]: expected a string, got 1",
    ),
    (
        '[packetparser.interfaces]\nexclude = ["eth/0"]\n',
        '[packetparser.interfaces].exclude[0]: expected an interface name glob, got "eth/0"',
    ),
    ("packetparser = 3\n", "[packetparser]: expected a table, got an integer"),
    (
        '[resolvers]\norder = ["docker2"]\n',
        '[resolvers].order[0]: unknown resolver "docker2" '
        '(known: "host", "docker", "containerd", "kubernetes", "static")',
    ),
    ('[resolvers]\norder = ["host", "host"]\n', '[resolvers].order[1]: "host" listed twice'),
    (
        '[resolvers.docker]\nhost = "htp:/nonsense"\n',
        '[resolvers.docker].host: expected unix:///path or tcp://host:port, got "htp:/nonsense"',
    ),
    (
        '[resolvers.containerd]\naddress = "run/containerd.sock"\n',
        "[resolvers.containerd].address: expected an absolute socket path, "
        'got "run/containerd.sock"',
    ),
    (
        "[resolvers.containerd]\nnamespaces = []\n",
        "[resolvers.containerd].namespaces: expected at least one namespace",
    ),
    (
        '[[resolvers.static.endpoints]]\ncidr = "10.0.0.1/8"\nname = "a"\n',
        '[resolvers.static.endpoints][0].cidr: 10.0.0.1/8 has host bits set, got "10.0.0.1/8"',
    ),
    (
        '[[resolvers.static.endpoints]]\nname = "a"\n',
        "[resolvers.static.endpoints][0].cidr: required key is missing",
    ),
    (
        '[[resolvers.static.endpoints]]\ncidr = "fd00::/64"\nname = "a"\nlabels = { a = 1 }\n',
        "[resolvers.static.endpoints][0].labels.a: expected a string, got 1",
    ),
    (
        '[[resolvers.static.endpoints]]\ncidr = "10.0.0.0/8"\nname = "a"\n'
        '[[resolvers.static.endpoints]]\ncidr = "10.0.0.0/8"\nname = "b"\n',
        "[resolvers.static.endpoints][1].cidr: 10.0.0.0/8 is already given by "
        "[resolvers.static.endpoints][0]",
    ),
    (
        '[[resolvers.static.endpoints]]\ncidr = "10.0.0.0/8"\nname = ""\n',
        "[resolvers.static.endpoints][0].name: expected a non-empty name",
    ),
    (
        '[resolvers.kubernetes]\nscope = "world"\n',
        '[resolvers.kubernetes].scope: expected one of "auto", "node", "cluster", got "world"',
    ),
    (
        '[log]\nlevel = "verbose"\n',
        '[log].level: expected one of "debug", "info", "warn", "error", got "verbose"',
    ),
    (
        "[packetparser.events]\nenabled = true\n",
        "[packetparser.events].enabled: per-packet flow events are not available in this "
        "release; every metric is counted in the kernel without them",
    ),
    (
        '[web]\nlisten_address = [":1"\n[log]\n',
        "TOML syntax error: Unclosed array (at line 3, column 1)",
    ),
    (
        "[web]\nmax_requests = 1 = 2\n",
        "TOML syntax error: Expected newline or end of document "
        "after a statement (at line 2, column 18)",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD_CONFIGS, ids=[m[:40] for _, m in BAD_CONFIGS])
def test_bad_config_is_refused_with_exact_message_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    cfg = tmp_path / "retinad.toml"
    cfg.write_text(text)
    assert main(["check-config", str(cfg)]) == 2
    assert capsys.readouterr().err == f"retinad: {cfg}: {message}\n"
    # The daemon itself refuses it the same way before touching anything.
    assert main(["--config.file", str(cfg)]) == 2
    assert capsys.readouterr().err == f"retinad: {cfg}: {message}\n"


def test_missing_explicit_config_file_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.toml"
    assert main(["--config.file", str(missing)]) == 2
    assert capsys.readouterr().err == f"retinad: {missing}: no such file\n"


def test_unreadable_config_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "retinad.toml"
    cfg.write_bytes(b"\xff\xfe not utf-8")
    assert main(["check-config", str(cfg)]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_bad_flag_values_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--web.listen-address", "nope", "check"]) == 2
    assert capsys.readouterr().err == (
        "retinad: --web.listen-address: expected host:port or :port, got 'nope'\n"
    )
    assert main(["--web.telemetry-path", "x", "check"]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["--log.level", "loud"])
    assert exc.value.code == 2


def test_embedded_default_equals_schema_defaults() -> None:
    assert load_default_config() == Settings()


def test_example_config_in_docs_is_valid() -> None:
    import re

    from retinad.config import parse_config

    doc = Path(__file__).resolve().parents[2] / "docs" / "CONFIG.md"
    blocks = re.findall(r"```toml\n(.*?)```", doc.read_text(), flags=re.S)
    assert blocks, "docs/CONFIG.md has no toml example"
    for block in blocks:
        parse_config(block, source=str(doc))


def test_check_config_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "retinad.toml"
    cfg.write_text('[metrics]\nmode = "basic"\nnaming = "retina"\n')
    assert main(["check-config", str(cfg)]) == 0
    assert capsys.readouterr().out == f"{cfg}: OK\n"
    s = load_config(cfg)
    assert (s.metrics.mode, s.metrics.naming) == ("basic", "retina")


def test_flags_override_the_file(tmp_path: Path) -> None:
    from retinad.cli import build_parser, load_settings

    cfg = tmp_path / "retinad.toml"
    cfg.write_text('[web]\nlisten_address = [":1"]\n[log]\nlevel = "warn"\n')
    args = build_parser().parse_args(
        [
            "--config.file",
            str(cfg),
            "--web.listen-address",
            "127.0.0.1:9",
            "--web.listen-address",
            "[::1]:9",
            "--log.level",
            "debug",
            "--no-collector.dropreason",
        ]
    )
    s = load_settings(args)
    assert s.web.listen_address == ["127.0.0.1:9", "[::1]:9"]
    assert s.log.level == "debug"
    assert s.dropreason.enabled is False
    assert s.packetparser.enabled is True


def test_every_key_is_documented() -> None:
    """docs/CONFIG.md has a table row for every key of the schema, under its table."""
    import dataclasses

    doc = (Path(__file__).resolve().parents[2] / "docs" / "CONFIG.md").read_text()

    def walk(cls: type, table: str) -> None:
        for f in dataclasses.fields(cls):
            default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
            if dataclasses.is_dataclass(default):
                name = f"{table}.{f.name}" if table else f.name
                assert f"`[{name}]`" in doc, f"[{name}] is not documented"
                walk(type(default), name)
            else:
                section = doc.split(f"`[{table}]`", 1)[1]
                assert f"| `{f.name}` |" in section, f"[{table}].{f.name} is not documented"
                args = typing.get_args(typing.get_type_hints(cls)[f.name])
                item = args[0] if len(args) == 1 else None
                if isinstance(item, type) and dataclasses.is_dataclass(item):  # an array of tables
                    name = f"{table}.{f.name}"
                    assert f"`[[{name}]]`" in doc, f"[[{name}]] is not documented"
                    part = doc.split(f"`[[{name}]]`", 1)[1]
                    for sub in dataclasses.fields(item):
                        assert f"| `{sub.name}` |" in part, f"[[{name}]].{sub.name} undocumented"

    walk(Settings, "")
