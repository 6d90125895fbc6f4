"""Command line: ``retinad [flags] [run|check|check-config [FILE]|print-default-config]``,
node_exporter style; ``retinad top [flags]`` is a client of a running daemon with flags of its
own (retinad/top), and so is ``retinad flows [flags]`` (retinad/flows).

Flags override the config file. Exit codes: 0 ok, 1 runtime failure (cannot start, check
found something missing), 2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from retinad import __version__
from retinad.config.load import (
    DEFAULT_CONFIG_PATH,
    default_config_text,
    ineffective_settings,
    load_config,
    load_default_config,
    parse_listen_address,
)
from retinad.config.schema import Settings, WebSettings
from retinad.errors import ConfigError, RetinadError
from retinad.logs import LEVELS, setup_logging
from retinad.plugins.registry import PLUGIN_NAMES

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2
COMMANDS = ["run", "check", "check-config", "print-default-config"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="retinad",
        description="eBPF network observability for Linux hosts, as Prometheus metrics.",
        epilog="commands: run (default) serves metrics; check probes this host for what the "
        "config needs; check-config [FILE] validates a config file and exits; "
        "print-default-config prints the embedded default config (every key, commented); "
        "top shows a running daemon live (retinad top --help); flows prints its flow "
        "records live (retinad flows --help).",
    )
    p.add_argument(
        "command",
        nargs="?",
        default="run",
        choices=COMMANDS,
        help="what to do (default: run)",
    )
    p.add_argument("file", nargs="?", help="config file for check-config")
    p.add_argument("--version", action="version", version=f"retinad {__version__}")
    p.add_argument(
        "--config.file",
        dest="config_file",
        metavar="FILE",
        help=f"TOML config (default {DEFAULT_CONFIG_PATH}; embedded defaults if it is absent)",
    )
    p.add_argument(
        "--web.listen-address",
        dest="listen_address",
        action="append",
        metavar="ADDR",
        help="address to listen on (repeatable), e.g. :10095 or [::1]:10095",
    )
    p.add_argument(
        "--web.config.file",
        dest="web_config_file",
        metavar="FILE",
        help="exporter-toolkit web config (TLS, basic auth)",
    )
    p.add_argument(
        "--web.telemetry-path",
        dest="telemetry_path",
        metavar="PATH",
        help="path under which metrics are served (default /metrics)",
    )
    p.add_argument(
        "--web.max-requests",
        dest="max_requests",
        type=int,
        metavar="N",
        help="concurrent scrapes allowed, 0 = no limit (default 40)",
    )
    p.add_argument(
        "--log.level", dest="log_level", choices=list(LEVELS), help="log level (default info)"
    )
    p.add_argument(
        "--log.format",
        dest="log_format",
        choices=["logfmt", "json"],
        help="log format (default logfmt)",
    )
    for name in PLUGIN_NAMES:
        p.add_argument(
            f"--collector.{name}",
            dest=f"collector_{name}",
            action=argparse.BooleanOptionalAction,
            default=None,
            help=f"enable the {name} collector (overrides [{name}].enabled)",
        )
    return p


def apply_flags(settings: Settings, args: argparse.Namespace) -> Settings:
    """Command-line flags over the file's settings, validated like the file."""
    web = settings.web
    if args.listen_address:
        for addr in args.listen_address:
            try:
                parse_listen_address(addr)
            except ValueError as err:
                raise ConfigError(f"--web.listen-address: {err}, got {addr!r}") from None
        web = dataclasses.replace(web, listen_address=list(args.listen_address))
    if args.web_config_file is not None:
        web = dataclasses.replace(web, config_file=args.web_config_file)
    if args.telemetry_path is not None:
        if not args.telemetry_path.startswith("/") or args.telemetry_path == "/":
            raise ConfigError(
                f'--web.telemetry-path: expected a path starting with "/" other than "/", '
                f"got {args.telemetry_path!r}"
            )
        web = dataclasses.replace(web, telemetry_path=args.telemetry_path)
    if args.max_requests is not None:
        bounds = {f.name: f.metadata for f in dataclasses.fields(WebSettings)}["max_requests"]
        lo, hi = bounds["min"], bounds["max"]  # one range for the flag and the TOML key
        if not lo <= args.max_requests <= hi:
            raise ConfigError(
                f"--web.max-requests: expected an integer from {lo} to {hi}, "
                f"got {args.max_requests}"
            )
        web = dataclasses.replace(web, max_requests=args.max_requests)
    log = settings.log
    if args.log_level:
        log = dataclasses.replace(log, level=args.log_level)
    if args.log_format:
        log = dataclasses.replace(log, format=args.log_format)
    out = dataclasses.replace(settings, web=web, log=log)
    for name in PLUGIN_NAMES:
        flag = getattr(args, f"collector_{name}")
        if flag is not None:
            section = dataclasses.replace(getattr(out, name), enabled=flag)
            out = dataclasses.replace(out, **{name: section})
    return out


def load_settings(args: argparse.Namespace) -> Settings:
    """The file (or embedded defaults when the default path is absent) plus flags."""
    path = args.config_file
    if path is None and not Path(DEFAULT_CONFIG_PATH).exists():
        base = load_default_config()
    else:
        base = load_config(path or DEFAULT_CONFIG_PATH)
    return apply_flags(base, args)


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate what the daemon would run with: the file (or the embedded defaults when
    no file is given and the default path is absent) plus flags, then everything the
    daemon would refuse at start that the config's own files can tell (the web config,
    a kubeconfig), with the daemon's own messages. Exit 0 or 2."""
    from retinad.daemon.preflight import preflight

    path = args.file or args.config_file
    if path is None and not Path(DEFAULT_CONFIG_PATH).exists():
        settings = apply_flags(load_default_config(), args)
        where = f"{DEFAULT_CONFIG_PATH} is absent: retinad would run on the embedded defaults"
    else:
        path = path or DEFAULT_CONFIG_PATH
        settings = apply_flags(load_config(path), args)
        where = path
    try:
        preflight(settings)
    except RetinadError as err:  # the web config or kubeconfig the daemon would refuse
        print(f"retinad: {err}", file=sys.stderr)
        return EXIT_CONFIG
    for warning in ineffective_settings(settings):
        print(f"retinad: warning: {warning}", file=sys.stderr)
    print(f"{where}: OK")
    return EXIT_OK


def cmd_check(settings: Settings) -> int:
    from retinad.daemon.preflight import preflight
    from retinad.kernel.check_table import flow_events_probe, run_probes
    from retinad.kernel.features import Probe

    needed = needed_probes(settings) | {"config"}
    try:
        preflight(settings)
        config = Probe("config", "ok", "the daemon would accept this configuration")
    except RetinadError as err:
        config = Probe("config", "missing", str(err))
    rows = []
    bad = denied = 0
    probes = [
        config,
        *run_probes(
            docker_host=settings.resolvers.docker.host,
            dropreason_request=settings.dropreason.source,
        ),
    ]
    if settings.packetparser.events.enabled:
        probes.append(flow_events_probe(settings.packetparser.events.transport))
    for probe in probes:
        need = probe.name in needed
        verdict = {
            "ok": "ok",
            "info": "info",
            "missing": "MISSING" if need else "absent",
            "denied": "DENIED" if need else "denied",  # no privilege to probe: not absent
        }
        status = verdict[probe.status]
        failed = probe.status in ("missing", "denied")
        if failed and need:
            bad += 1
            denied += probe.status == "denied"
        detail = probe.detail + (f" -> {probe.fix}" if failed and probe.fix else "")
        rows.append((probe.name, status, "yes" if need else "no", detail))
    w = max(len(r[0]) for r in rows)
    print(f"{'CHECK':<{w}}  {'STATUS':<7}  {'NEEDED':<6}  DETAIL")
    for name, status, need_s, detail in rows:
        print(f"{name:<{w}}  {status:<7}  {need_s:<6}  {detail}")
    if denied:
        print(
            f"\nretinad cannot run with this config: {bad - denied} needed item(s) missing, "
            f"{denied} not probed: privileges missing (see capabilities)."
        )
        return EXIT_FAILURE
    if bad:
        print(f"\nretinad cannot run with this config: {bad} needed item(s) missing.")
        return EXIT_FAILURE
    print("\nretinad can run with this config.")
    return EXIT_OK


def needed_probes(settings: Settings) -> set[str]:
    """Which probes this config depends on (the rest are informational)."""
    need = {"kernel", "capabilities"}
    bpf = settings.packetparser.enabled or settings.dropreason.enabled
    if bpf:
        need |= {"bcc", "kernel_headers"}
    if settings.packetparser.enabled:
        need.add("tc")
        if settings.packetparser.attach_mode == "tcx":
            need.add("tcx")
    if settings.dropreason.enabled:
        need |= {"btf", "tracefs", "dropreason_source"}
        if settings.dropreason.source != "hooks":
            need.add("tracepoints")
    if settings.packetparser.events.enabled:
        need.add("flow_events")
        if settings.packetparser.events.transport == "ringbuf":
            need.add("ringbuf")
    return need


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["__compile-bpf"] and len(argv) == 2:
        # Internal, not in --help: the short-lived compile child (retinad/kernel/loader.py).
        from retinad.kernel.loader import child_main

        child_main(int(argv[1]))
    if argv[:1] == ["flows"]:
        from retinad.flows.cli import main as flows_main

        return flows_main(argv[1:])
    if argv[:1] == ["top"]:
        from retinad.top.app import main as top_main

        return top_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "print-default-config":
        sys.stdout.write(default_config_text())
        return EXIT_OK
    try:
        if args.command == "check-config":
            return cmd_check_config(args)
        if args.command == "check":
            return cmd_check(load_settings(args))
        # Parse the config before logging is configured, so its own level/format apply.
        settings = load_settings(args)
        log = setup_logging(settings.log.level, settings.log.format)
        if args.config_file is None and not Path(DEFAULT_CONFIG_PATH).exists():
            log.info("%s not found; using the embedded default config", DEFAULT_CONFIG_PATH)
    except ConfigError as err:
        print(f"retinad: {err}", file=sys.stderr)
        return EXIT_CONFIG

    from retinad.daemon.malloc import tune_malloc

    tune_malloc()  # before any thread: see retinad/daemon/malloc.py
    from retinad.daemon.lifecycle import Daemon

    daemon = Daemon(settings, loader=lambda: load_settings(args), logger=log)
    daemon.install_signal_handlers()
    log.info("starting retinad %s (pid %d)", __version__, os.getpid())
    try:
        return daemon.run()
    except RetinadError as err:
        log.error("cannot start: %s", err)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
