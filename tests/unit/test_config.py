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
        '[packetparser.events].transport: expected one of "auto", "ringbuf", "perf", got "pipe"',
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
        "[resolvers.docker]\nread_timeout_seconds = 0\n",
        "[resolvers.docker].read_timeout_seconds: expected an integer from 1 to 300, got 0",
    ),
    (
        "[resolvers.containerd]\nresync_interval_seconds = -1\n",
        "[resolvers.containerd].resync_interval_seconds: expected an integer from 0 to 86400, "
        "got -1",
    ),
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
        "[packetparser.events]\nring_pages = 1000\n",
        "[packetparser.events].ring_pages: expected a power of two (the kernel's ring sizes "
        "are), got 1000",
    ),
    (
        '[packetparser.events.log]\npath = "flows.json"\n',
        '[packetparser.events.log].path: expected an absolute path, "-" (stdout) or "" (none), '
        'got "flows.json"',
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
    (
        '[[latency.targets]]\nname = "db"\naddress = "10.0.3.7/24"\n',
        '[latency.targets][0].address: 10.0.3.7/24 has host bits set, got "10.0.3.7/24"',
    ),
    (
        '[[latency.targets]]\nname = "db"\naddress = "db.example"\n',
        "[latency.targets][0].address: 'db.example' does not appear to be an IPv4 or IPv6 "
        'network, got "db.example"',
    ),
    (
        '[[latency.targets]]\nname = ""\naddress = "10.0.3.7"\n',
        "[latency.targets][0].name: expected a non-empty name",
    ),
    (
        '[[latency.targets]]\nname = "db"\naddress = "10.0.3.7"\nport = 65536\n',
        "[latency.targets][0].port: expected an integer from 0 to 65535, got 65536",
    ),
    (
        '[[latency.targets]]\nname = "a"\naddress = "10.0.3.7"\n'
        '[[latency.targets]]\nname = "b"\naddress = "10.0.3.7/32"\n',
        "[latency.targets][1].address: 10.0.3.7/32 port 0 is already given by [latency.targets][0]",
    ),
    ('[[latency.targets]]\nname = "db"\n', "[latency.targets][0].address: required key is missing"),
    (
        "[latency]\ntimeout_seconds = 0\n",
        "[latency].timeout_seconds: expected an integer from 1 to 300, got 0",
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


# --- what check-config promises: nothing the daemon would refuse at start -----------------------


def test_order_empty_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "retinad.toml"
    cfg.write_text("[resolvers]\norder = []\n")
    assert main(["check-config", str(cfg)]) == 2
    assert capsys.readouterr().err == (
        f'retinad: {cfg}: [resolvers].order: expected at least one resolver ("host" names '
        "what the host itself knows)\n"
    )


def test_max_requests_flag_has_the_keys_range(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--web.max-requests", "20000", "check-config"]) == 2
    assert capsys.readouterr().err == (
        "retinad: --web.max-requests: expected an integer from 0 to 10000, got 20000\n"
    )


def test_web_config_file_is_relative_to_the_toml_files_folder(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    cfg = tmp_path / "etc" / "retinad.toml"
    cfg.write_text('[web]\nconfig_file = "web.yml"\n')
    assert load_config(cfg).web.config_file == str(tmp_path / "etc" / "web.yml")
    cfg.write_text('[web]\nconfig_file = "/abs/web.yml"\n')
    assert load_config(cfg).web.config_file == "/abs/web.yml"


def test_missing_web_config_file_fails_check_config_as_the_daemon_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], free_port: int
) -> None:
    from tests.daemon_proc import DaemonProcess

    cfg = tmp_path / "retinad.toml"
    cfg.write_text(
        f'[web]\nlisten_address = ["127.0.0.1:{free_port}"]\nconfig_file = "web.yml"\n'
        "[packetparser]\nenabled = false\n[dropreason]\nenabled = false\n"
    )
    message = f"[web].config_file: {tmp_path / 'web.yml'}: no such file"
    assert main(["check-config", str(cfg)]) == 2
    assert capsys.readouterr().err == f"retinad: {message}\n"
    d = DaemonProcess(["--config.file", str(cfg)], workdir=tmp_path)
    assert d.proc.wait(30) == 1
    d.stop()
    assert f'msg="cannot start: {message}"' in d.log


def test_kubernetes_without_any_config_fails_check_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    cfg = tmp_path / "retinad.toml"
    cfg.write_text('[resolvers]\norder = ["kubernetes", "host"]\n')
    assert main(["check-config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        'retinad: [resolvers.kubernetes].kubeconfig is "" (use the pod\'s service account), '
        "but no in-cluster configuration is available ("
    )
    assert err.endswith("): set it to a kubeconfig file\n")
    cfg.write_text('[resolvers]\norder = ["kubernetes", "host"]\n[metrics]\nmode = "basic"\n')
    assert main(["check-config", str(cfg)]) == 0  # basic mode starts no resolver
    assert '[resolvers].order ("kubernetes", "host") has no effect' in capsys.readouterr().err


def test_check_config_without_a_file_uses_the_embedded_defaults(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from retinad.config.load import DEFAULT_CONFIG_PATH

    assert not Path(DEFAULT_CONFIG_PATH).exists(), "this test needs the default path absent"
    assert main(["check-config"]) == 0
    assert capsys.readouterr().out == (
        f"{DEFAULT_CONFIG_PATH} is absent: retinad would run on the embedded defaults: OK\n"
    )


def test_settings_without_effect_in_basic_mode_warn(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "retinad.toml"
    cfg.write_text(
        '[metrics]\nmode = "basic"\nip_label = true\n[packetparser]\nremote_context = true\n'
        '[resolvers]\norder = ["docker", "host"]\n'
    )
    assert main(["check-config", str(cfg)]) == 0
    basic = '[metrics].mode = "basic" (node-level series only)'
    assert capsys.readouterr().err.splitlines() == [
        f"retinad: warning: [packetparser].remote_context has no effect with {basic}",
        f"retinad: warning: [metrics].ip_label has no effect with {basic}",
        f'retinad: warning: [resolvers].order ("docker", "host") has no effect with {basic}: '
        "none is started",
    ]


def test_latency_targets_without_packetparser_warn(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "retinad.toml"
    target = '[[latency.targets]]\nname = "db"\naddress = "10.0.0.20"\n'
    cfg.write_text("[packetparser]\nenabled = false\n" + target)
    assert main(["check-config", str(cfg)]) == 0
    assert capsys.readouterr().err.splitlines() == [
        "retinad: warning: [latency.targets] has no effect with [packetparser].enabled = false "
        "(packetparser's programs measure latency)"
    ]
    cfg.write_text(target)  # packetparser on: no warning
    assert main(["check-config", str(cfg)]) == 0
    assert capsys.readouterr().err == ""


def test_check_reads_the_configured_docker_host(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "retinad.toml"
    sock = tmp_path / "docker.sock"
    cfg.write_text(f'[resolvers.docker]\nhost = "unix://{sock}"\n')
    main(["--config.file", str(cfg), "check"])
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("docker_socket")]
    assert len(rows) == 1 and rows[0].endswith(f"{sock} absent"), rows


# --- bad input at volume ---------------------------------------------------------------------

_TABLE_KEYS: dict[str, list[str]] = {}


def _known_keys() -> dict[str, list[str]]:
    """Table path -> its keys, from the schema (so the fuzz mostly hits real keys)."""
    import dataclasses

    if not _TABLE_KEYS:

        def walk(cls: type, path: str) -> None:
            hints = typing.get_type_hints(cls)
            _TABLE_KEYS[path] = [f.name for f in dataclasses.fields(cls)]
            for f in dataclasses.fields(cls):
                if dataclasses.is_dataclass(hints[f.name]):
                    walk(hints[f.name], f"{path}.{f.name}".lstrip("."))

        walk(Settings, "")
    return _TABLE_KEYS


def _toml_value(value: object) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # TOML basic strings take JSON's escapes
    if isinstance(value, int | float):
        return json.dumps(value)  # NaN/Infinity are not TOML: a syntax error to report
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def _toml_key(key: str) -> str:
    import json
    import re

    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def test_check_config_over_generated_configs_exits_0_or_2_naming_the_key(
    tmp_path: Path,
) -> None:
    """1,000 generated configs (wrong types, unknown keys, out-of-range values, broken
    TOML, huge strings, odd Unicode, invalid UTF-8) through ``retinad check-config``:
    exit 0, or 2 with one line naming the file and the key; never a traceback."""
    import contextlib
    import io

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    tables = _known_keys()
    odd_text = st.text(
        alphabet=st.characters(codec=None, exclude_categories=()), max_size=40
    ) | st.sampled_from(["", "\u202e", "é", "\U0001f600", "\x00", "a" * 100_000, "/", ":0"])
    scalars = (
        st.booleans()
        | st.integers(min_value=-(2**63), max_value=2**63 - 1)
        | st.sampled_from([0, -1, 1, 63, 64, 10000, 10001, 1 << 20, (1 << 20) + 1])
        | st.floats(allow_nan=True)
        | odd_text
        | st.sampled_from(["basic", "advanced", "retina", "ringbuf", "tcx", "host", "info"])
    )
    values = st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(odd_text, inner, max_size=3),
        max_leaves=8,
    )
    table_names = st.sampled_from([t for t in tables if t]) | odd_text
    key_for = {t: st.sampled_from(keys) | odd_text for t, keys in tables.items() if keys}

    @st.composite
    def documents(draw: st.DrawFn) -> bytes:
        kind = draw(st.sampled_from(["structured", "structured", "structured", "text", "bytes"]))
        if kind == "bytes":
            return draw(st.binary(max_size=200))
        if kind == "text":
            return draw(odd_text).encode("utf-8", "surrogatepass")
        lines = []
        for _ in range(draw(st.integers(0, 4))):
            table = draw(table_names)
            lines.append(f"[{'.'.join(_toml_key(p) for p in table.split('.'))}]")
            keys = key_for.get(table, odd_text)
            for _ in range(draw(st.integers(0, 4))):
                lines.append(f"{_toml_key(draw(keys))} = {_toml_value(draw(values))}")
        return "\n".join(lines).encode("utf-8", "surrogatepass")

    cfg = tmp_path / "fuzz.toml"
    outcomes: dict[int, int] = {}

    @settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
    @given(documents())
    def check(doc: bytes) -> None:
        cfg.write_bytes(doc)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(["check-config", str(cfg)])
        outcomes[rc] = outcomes.get(rc, 0) + 1
        assert rc in (0, 2)
        if rc == 0:
            assert out.getvalue().endswith(": OK\n")
            return
        message = err.getvalue()
        assert message.startswith("retinad: ") and message.endswith("\n")
        assert "Traceback" not in message
        if f"retinad: {cfg}: " in message:
            detail = message.removeprefix(f"retinad: {cfg}: ")
            names_a_key = detail.startswith(("[", "top level"))
            assert names_a_key or detail.startswith(("TOML syntax error", "cannot read")), message
        else:  # a file the config names (web config, kubeconfig), with its key
            assert message.startswith(("retinad: [web].config_file: ", "retinad: [resolvers.")), (
                message
            )

    check()
    assert sum(outcomes.values()) >= 1000 and outcomes.get(2, 0) > 0, outcomes
