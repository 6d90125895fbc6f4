"""Read a TOML file into ``Settings``, strictly.

Every problem becomes a ``ConfigError`` whose message names the file, the key path in
TOML's own spelling and what was expected, e.g.::

    retinad.toml: [log].level: expected one of "debug", "info", "warn", "error", got "verbose"

Unknown keys and tables are errors (with a "did you mean" when a known name is close),
because a misspelt key silently falling back to its default is the worst surprise an
operator can get. Nothing here touches the host: loading is pure.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import ipaddress
import os
import tomllib
import types
import typing
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from retinad.config.schema import RESOLVER_NAMES, Settings
from retinad.errors import ConfigError

DEFAULT_CONFIG_PATH = "/etc/retinad/retinad.toml"
KNOWN_RESOLVERS = RESOLVER_NAMES
"""Resolver names [resolvers].order accepts in this release (schema.RESOLVER_NAMES)."""
MAX_LATENCY_TARGETS = 256
"""RETINAD_LAT_MAX_TARGETS (bpf/retinad.h): distinct target names, "apiserver" included."""
MAX_LATENCY_PREFIXES = 1024
"""RETINAD_LAT_MAX_PREFIXES: entries of the kernel's target trie."""

T = TypeVar("T")


def load_config(path: str | Path) -> Settings:
    """Read and validate the TOML file at ``path``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{p}: cannot read: {err}") from err
    settings = parse_config(text, source=str(p))
    web_config = settings.web.config_file
    if web_config and not os.path.isabs(web_config):
        # As Prometheus does for the files its config names: relative to the config's folder.
        resolved = os.path.normpath(os.path.join(p.parent.absolute(), web_config))
        settings = dataclasses.replace(
            settings, web=dataclasses.replace(settings.web, config_file=resolved)
        )
    return settings


def default_config_text() -> str:
    """The embedded default config (retinad/default.toml) as shipped, comments included:
    what ``retinad print-default-config`` prints."""
    return resources.files("retinad").joinpath("default.toml").read_text(encoding="utf-8")


def load_default_config() -> Settings:
    """The embedded default config shipped inside the package (retinad/default.toml)."""
    return parse_config(default_config_text(), source="<embedded default config>")


def parse_config(text: str, *, source: str) -> Settings:
    """Parse TOML text; ``source`` names it in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{source}: TOML syntax error: {err}") from err
    settings = _build(Settings, data, source=source, path=())
    _check_cross_field(settings, source)
    return settings


# --- generic walker -------------------------------------------------------------------


def _where(path: tuple[str, ...]) -> str:
    """Render a key path the way it is written in TOML: ``[table.sub].key``; an element
    of an array of tables reads ``[table.array][1].key`` (0-based)."""
    if not path:
        return "top level"
    *tables, key = path
    if key.startswith("["):  # a list index such as [1]
        return _where(tuple(tables)) + key
    for i in range(len(tables) - 1, -1, -1):
        if tables[i].startswith("["):
            rest = ".".join([*tables[i + 1 :], key])
            return f"[{'.'.join(tables[:i])}]{tables[i]}.{rest}"
    return f"[{'.'.join(tables)}].{key}" if tables else f"[{key}]"


def _type_name(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a float",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    return repr(value)


def _build(cls: type[T], data: Any, *, source: str, path: tuple[str, ...]) -> T:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {_where(path)}: expected a table, got {_type_name(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in fields:
            near = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            what = "table" if isinstance(data[key], dict) else "key"
            raise ConfigError(f"{source}: {_where((*path, key))}: unknown {what}{hint}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], f, source=source, path=(*path, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{source}: {_where((*path, name))}: required key is missing")
    return cls(**kwargs)


def _convert(
    tp: Any, value: Any, f: dataclasses.Field[Any] | None, *, source: str, path: tuple[str, ...]
) -> Any:
    where = f"{source}: {_where(path)}"
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, source=source, path=path)  # type: ignore[arg-type]
    if origin is Literal:
        choices = get_args(tp)
        if not isinstance(value, str) or value not in choices:
            names = [f'"{c}"' for c in choices]
            listed = " or ".join(names) if len(names) == 2 else "one of " + ", ".join(names)
            raise ConfigError(f"{where}: expected {listed}, got {_show(value)}")
        return value
    if origin is list:
        (item_tp,) = get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected an array, got {_type_name(value)}")
        return [
            _convert(item_tp, v, None, source=source, path=(*path, f"[{i}]"))
            for i, v in enumerate(value)
        ]
    if origin is dict:
        key_tp, item_tp = get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {_type_name(value)}")
        return {
            _convert(key_tp, k, None, source=source, path=(*path, k)): _convert(
                item_tp, v, None, source=source, path=(*path, k)
            )
            for k, v in value.items()
        }
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"unsupported union type at {where}")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected a boolean, got {_show(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {_show(value)}")
        meta = f.metadata if f is not None else {}
        lo, hi = meta.get("min"), meta.get("max")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ConfigError(f"{where}: expected an integer from {lo} to {hi}, got {value}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {_show(value)}")
        return value
    raise TypeError(f"unsupported type {tp!r} at {where}")


# --- rules that span more than a type -----------------------------------------------------


def parse_listen_address(addr: str, *, allow_port_zero: bool = False) -> tuple[str, int]:
    """Split "host:port", "[v6]:port" or ":port" into (host, port); ValueError if malformed.

    The one parser of listen addresses: the config check, the command-line flag and the
    web server all use it. Port 0 ("any free port") is refused in a config, where it
    would make the exporter unreachable, and allowed for the server itself (tests).
    """
    if addr.startswith("["):
        host, sep, port = addr[1:].partition("]:")
        if not sep:
            raise ValueError("expected [address]:port")
    else:
        host, sep, port = addr.rpartition(":")
        if not sep:
            raise ValueError("expected host:port or :port")
        if ":" in host:
            raise ValueError("an IPv6 address must be in brackets, as [::1]:port")
    lowest = 0 if allow_port_zero else 1
    if not port.isdigit() or not lowest <= int(port) < 65536:
        raise ValueError(f"port {port!r} is not a number from {lowest} to 65535")
    return host, int(port)


def _check_globs(globs: list[str], where: str) -> None:
    for i, g in enumerate(globs):
        if not g or "/" in g:
            raise ConfigError(f"{where}[{i}]: expected an interface name glob, got {_show(g)}")
        try:
            fnmatch.translate(g)
        except Exception as err:  # pragma: no cover - fnmatch accepts nearly anything
            raise ConfigError(f"{where}[{i}]: invalid glob {_show(g)}: {err}") from err


def _check_cross_field(s: Settings, source: str) -> None:
    checks: list[Callable[[], None]] = []

    def web() -> None:
        if not s.web.listen_address:
            raise ConfigError(f"{source}: [web].listen_address: expected at least one address")
        for i, addr in enumerate(s.web.listen_address):
            try:
                parse_listen_address(addr)
            except ValueError as err:
                raise ConfigError(
                    f"{source}: [web].listen_address[{i}]: {err}, got {_show(addr)}"
                ) from None
        if not s.web.telemetry_path.startswith("/") or s.web.telemetry_path == "/":
            raise ConfigError(
                f'{source}: [web].telemetry_path: expected a path starting with "/" other '
                f'than "/", got {_show(s.web.telemetry_path)}'
            )

    def interfaces() -> None:
        _check_globs(
            s.packetparser.interfaces.include, f"{source}: [packetparser.interfaces].include"
        )
        _check_globs(
            s.packetparser.interfaces.exclude, f"{source}: [packetparser.interfaces].exclude"
        )

    def events() -> None:
        ev = s.packetparser.events
        for key in ("ring_pages", "perf_pages"):
            n = getattr(ev, key)
            if n & (n - 1):
                raise ConfigError(
                    f"{source}: [packetparser.events].{key}: expected a power of two "
                    f"(the kernel's ring sizes are), got {n}"
                )
        if ev.socket and not ev.socket.startswith("/"):
            raise ConfigError(
                f'{source}: [packetparser.events].socket: expected an absolute path or "" '
                f"(none), got {_show(ev.socket)}"
            )
        if ev.log.path not in ("", "-") and not ev.log.path.startswith("/"):
            raise ConfigError(
                f"{source}: [packetparser.events.log].path: expected an absolute path, "
                f'"-" (stdout) or "" (none), got {_show(ev.log.path)}'
            )

    def resolvers() -> None:
        if not s.resolvers.order:
            raise ConfigError(
                f'{source}: [resolvers].order: expected at least one resolver ("host" names '
                "what the host itself knows)"
            )
        seen: set[str] = set()
        for i, name in enumerate(s.resolvers.order):
            if name not in KNOWN_RESOLVERS:
                known = ", ".join(f'"{r}"' for r in KNOWN_RESOLVERS)
                raise ConfigError(
                    f"{source}: [resolvers].order[{i}]: unknown resolver {_show(name)} "
                    f"(known: {known})"
                )
            if name in seen:
                raise ConfigError(f"{source}: [resolvers].order[{i}]: {_show(name)} listed twice")
            seen.add(name)

    def static_endpoints() -> None:
        seen: dict[str, int] = {}
        for i, ep in enumerate(s.resolvers.static.endpoints):
            where = f"{source}: [resolvers.static.endpoints][{i}]"
            try:
                net = ipaddress.ip_network(ep.cidr, strict=True)
            except ValueError as err:
                raise ConfigError(f"{where}.cidr: {err}, got {_show(ep.cidr)}") from None
            if str(net) in seen:
                raise ConfigError(
                    f"{where}.cidr: {net} is already given by "
                    f"[resolvers.static.endpoints][{seen[str(net)]}]"
                )
            seen[str(net)] = i
            if not ep.name:
                raise ConfigError(f"{where}.name: expected a non-empty name")

    def resolver_addresses() -> None:
        host = s.resolvers.docker.host
        scheme, sep, rest = host.partition("://")
        if not sep or scheme not in ("unix", "tcp", "http", "https") or not rest:
            raise ConfigError(
                f"{source}: [resolvers.docker].host: expected unix:///path or "
                f"tcp://host:port, got {_show(host)}"
            )
        addr = s.resolvers.containerd.address
        if not (addr.startswith("/") or addr.startswith("unix:///")):
            raise ConfigError(
                f"{source}: [resolvers.containerd].address: expected an absolute socket path, "
                f"got {_show(addr)}"
            )
        if not s.resolvers.containerd.namespaces:
            raise ConfigError(
                f"{source}: [resolvers.containerd].namespaces: expected at least one namespace"
            )

    def latency_targets() -> None:
        seen: dict[tuple[str, int], int] = {}
        names: set[str] = set()
        for i, t in enumerate(s.latency.targets):
            where = f"{source}: [latency.targets][{i}]"
            if not t.name:
                raise ConfigError(f"{where}.name: expected a non-empty name")
            try:
                net = ipaddress.ip_network(t.address, strict=True)
            except ValueError as err:
                raise ConfigError(f"{where}.address: {err}, got {_show(t.address)}") from None
            if (str(net), t.port) in seen:
                raise ConfigError(
                    f"{where}.address: {net} port {t.port} is already given by "
                    f"[latency.targets][{seen[(str(net), t.port)]}]"
                )
            seen[(str(net), t.port)] = i
            names.add(t.name)
        if len(seen) > MAX_LATENCY_PREFIXES - 16:
            raise ConfigError(
                f"{source}: [latency.targets]: at most {MAX_LATENCY_PREFIXES - 16} entries "
                f"(16 stay free for the API server), got {len(seen)}"
            )
        if len(names) > MAX_LATENCY_TARGETS - 1:
            raise ConfigError(
                f"{source}: [latency.targets]: at most {MAX_LATENCY_TARGETS - 1} distinct "
                f"names, got {len(names)}"
            )

    checks += [web, interfaces, events, resolvers, static_endpoints, resolver_addresses]
    checks.append(latency_targets)
    for check in checks:
        check()


def ineffective_settings(s: Settings) -> list[str]:
    """Settings that change nothing in the chosen mode, one warning each (start, reload,
    check-config): an operator who set them expects something that will not happen."""
    out = []
    if s.latency.targets and not s.packetparser.enabled:
        out.append(
            "[latency.targets] has no effect with [packetparser].enabled = false "
            "(packetparser's programs measure latency)"
        )
    if s.metrics.mode != "basic":
        return out
    basic = '[metrics].mode = "basic" (node-level series only)'
    if s.packetparser.remote_context:
        out.append(f"[packetparser].remote_context has no effect with {basic}")
    if s.metrics.ip_label:
        out.append(f"[metrics].ip_label has no effect with {basic}")
    if s.resolvers.order != ["host"]:
        names = ", ".join(f'"{r}"' for r in s.resolvers.order)
        out.append(f"[resolvers].order ({names}) has no effect with {basic}: none is started")
    return out
