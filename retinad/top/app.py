"""``retinad top [flags]``: which daemon to read, and the refresh loop with its keys.

The daemon's address comes from the same config retinad runs with (first listen address,
telemetry path, and its web config: TLS on means https, and the server's own certificate
is trusted by default since retinad's are usually self-signed). Basic auth credentials
cannot be derived from the web config's bcrypt hashes, so they are flags; the password is
read from a file so it never shows in ``ps``.
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import ssl
import sys
import termios
import time
import tty
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.live import Live

from retinad.config.load import (
    DEFAULT_CONFIG_PATH,
    load_config,
    load_default_config,
    parse_listen_address,
)
from retinad.errors import ConfigError, RetinadError
from retinad.exporter.webconfig import load_web_config
from retinad.top.rates import SORT_KEYS, build_report
from retinad.top.scrape import Snapshot, Target, scrape
from retinad.top.view import ViewState, plain_text, screen

KEYS = {"b": "bytes", "i": "bytes_in", "o": "bytes_out", "p": "packets", "d": "drops", "n": "name"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="retinad top",
        description="Live view of a running retinad: endpoints by traffic, drops by reason, "
        "latency per target. Plain text when stdout is not a terminal.",
    )
    p.add_argument("--url", help="the daemon's metrics URL (default: from the config file)")
    p.add_argument(
        "--config.file",
        dest="config_file",
        metavar="FILE",
        help=f"retinad's config, for its address and web config (default {DEFAULT_CONFIG_PATH})",
    )
    p.add_argument(
        "--web.config.file",
        dest="web_config_file",
        metavar="FILE",
        help="retinad's web config (overrides the config file's)",
    )
    p.add_argument(
        "--tls.ca-file",
        dest="ca_file",
        metavar="FILE",
        help="CA to verify the daemon's certificate (default: the certificate "
        "the web config names)",
    )
    p.add_argument(
        "--tls.cert-file",
        dest="cert_file",
        metavar="FILE",
        help="client certificate, when the web config asks for one",
    )
    p.add_argument("--tls.key-file", dest="key_file", metavar="FILE")
    p.add_argument("--tls.insecure-skip-verify", dest="insecure", action="store_true")
    p.add_argument("--basic-auth.username", dest="username", default="")
    p.add_argument("--basic-auth.password-file", dest="password_file", metavar="FILE")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    p.add_argument("--sort", choices=SORT_KEYS, default="bytes")
    p.add_argument("--filter", default="", help="show endpoints whose name contains this")
    p.add_argument("--limit", type=int, default=20, help="rows per table")
    p.add_argument(
        "--count",
        type=int,
        default=None,
        help="refreshes before exiting (default: forever on a terminal, 1 otherwise)",
    )
    return p


def _host_for_url(listen: str) -> str:
    host, port = parse_listen_address(listen)
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def build_target(args: argparse.Namespace) -> Target:
    """Where and how to scrape; ConfigError names the flag or file that is wrong."""
    path = args.config_file
    if path is None and not Path(DEFAULT_CONFIG_PATH).exists():
        settings = load_default_config()
    else:
        settings = load_config(path or DEFAULT_CONFIG_PATH)
    web_config_path = (
        args.web_config_file if args.web_config_file is not None else settings.web.config_file
    )
    web = load_web_config(web_config_path)
    scheme = "https" if web.tls is not None else "http"
    url = args.url or (
        f"{scheme}://{_host_for_url(settings.web.listen_address[0])}{settings.web.telemetry_path}"
    )
    context = None
    if url.startswith("https://"):
        context = ssl.create_default_context()
        if args.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            ca = args.ca_file or (web.tls.cert_file if web.tls is not None else None)
            if ca:
                context.load_verify_locations(ca)
        if args.cert_file:
            context.load_cert_chain(args.cert_file, args.key_file)
        elif web.tls is not None and web.tls.client_auth_type.startswith("RequireAndVerify"):
            raise ConfigError(
                f"{web_config_path}: client_auth_type {web.tls.client_auth_type} needs a client "
                "certificate: pass --tls.cert-file and --tls.key-file"
            )
    password = ""
    if args.password_file:
        try:
            password = Path(args.password_file).read_text().rstrip("\n")
        except OSError as err:
            raise ConfigError(f"--basic-auth.password-file: {err}") from None
    if web.basic_auth_users and not args.username:
        raise ConfigError(
            f"{web_config_path}: basic_auth_users is set: pass --basic-auth.username and "
            "--basic-auth.password-file"
        )
    return Target(url, context, args.username, password)


@contextmanager
def keyboard() -> Iterator[int]:
    """stdin in cbreak mode (keys without Enter, no echo), restored on exit."""
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def handle_key(key: str, state: ViewState) -> bool:
    """Apply one key; False means quit."""
    if state.typing is not None:
        if key in ("\r", "\n"):
            state.filter, state.typing = state.typing, None
        elif key == "\x1b":
            state.typing = None
        elif key in ("\x7f", "\b"):
            state.typing = state.typing[:-1]
        elif key.isprintable():
            state.typing += key
        return True
    if key in ("q", "\x03"):
        return False
    if key == "/":
        state.typing = ""
    elif key in KEYS:
        state.sort = KEYS[key]
    return True


def run_tty(target: Target, state: ViewState, interval: float, count: int | None) -> int:
    console = Console()
    before = scrape(target)
    done = 0
    with keyboard() as fd, Live(console=console, screen=True, auto_refresh=False) as live:
        report = None
        deadline = time.monotonic() + interval
        while count is None or done < count:
            wait = max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([fd], [], [], wait)
            if ready:
                if not handle_key(os.read(fd, 1).decode(errors="replace"), state):
                    return 0
                if report is not None:
                    live.update(screen(report, target.url, state), refresh=True)
                continue
            now = scrape(target)
            report = build_report(before, now)
            before, deadline, done = now, time.monotonic() + interval, done + 1
            live.update(screen(report, target.url, state), refresh=True)
    return 0


def run_plain(target: Target, state: ViewState, interval: float, count: int | None) -> int:
    width = shutil.get_terminal_size((160, 24)).columns
    before: Snapshot = scrape(target)
    done = 0
    while count is None or done < count:
        time.sleep(interval)  # the refresh period itself, not a synchronisation
        now = scrape(target)
        sys.stdout.write(plain_text(build_report(before, now), target.url, state, width))
        sys.stdout.flush()
        before, done = now, done + 1
    return 0


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.interval <= 0:
            raise ConfigError(f"--interval: expected seconds above 0, got {args.interval}")
        target = build_target(args)
        state = ViewState(sort=args.sort, filter=args.filter, limit=args.limit)
        if sys.stdout.isatty() and sys.stdin.isatty():
            return run_tty(target, state, args.interval, args.count)
        return run_plain(target, state, args.interval, 1 if args.count is None else args.count)
    except ConfigError as err:
        print(f"retinad top: {err}", file=sys.stderr)
        return 2
    except RetinadError as err:
        print(f"retinad top: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
