"""``retinad flows [flags]``: print a running daemon's flow records as they happen.

It connects to ``[packetparser.events].socket`` (default /run/retinad/flows.sock), which
only root may open, and prints each record that passes the filters: one line each, or the
record itself with ``--output json`` (docs/FLOWS.md is the schema). Exit codes: 0 after
``--count`` records or when the daemon closes the stream, 1 when the socket cannot be
opened (not running, events off, not root), 2 for bad flags.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from collections.abc import Sequence

from retinad.config.schema import EventSettings
from retinad.flows.view import Filter, line

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="retinad flows",
        description="Follow a running retinad's flow records live (root only). Needs "
        "[packetparser.events] enabled in the daemon's config.",
    )
    p.add_argument("--socket", default=EventSettings().socket,
                   help="the daemon's flow socket (default %(default)s)")  # fmt: skip
    p.add_argument("--name", action="append", default=[],
                   help="endpoint name or namespace/name glob (repeatable)")  # fmt: skip
    p.add_argument("--ip", action="append", default=[], help="address of either end (repeatable)")
    p.add_argument("--port", action="append", type=int, default=[],
                   help="port of either end (repeatable)")  # fmt: skip
    p.add_argument("--protocol", choices=["tcp", "udp"], help="only this protocol")
    p.add_argument("--direction", choices=["ingress", "egress"],
                   help="only this direction (the endpoint's point of view)")  # fmt: skip
    p.add_argument("--interface", default="", help="observation point interface name glob")
    p.add_argument("--output", choices=["text", "json"], default="text",
                   help="text: one line per flow; json: the record as a JSON line")  # fmt: skip
    p.add_argument("--count", type=int, default=0,
                   help="exit after this many records (0: follow until interrupted)")  # fmt: skip
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep = Filter(
        names=tuple(args.name),
        ips=tuple(args.ip),
        ports=tuple(args.port),
        protocol=args.protocol or "",
        direction=args.direction or "",
        interface=args.interface,
    )
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(args.socket)
    except PermissionError:
        print(f"retinad flows: {args.socket}: permission denied: retinad flows is for root "
              f"only (running as uid {os.getuid()})", file=sys.stderr)  # fmt: skip
        return EXIT_FAILURE
    except OSError as err:
        print(f"retinad flows: {args.socket}: {err.strerror}: is retinad running with "
              "[packetparser.events] enabled?", file=sys.stderr)  # fmt: skip
        return EXIT_FAILURE
    shown = 0
    try:
        for raw in sock.makefile("rb"):
            msg = json.loads(raw)
            if "error" in msg:
                print(f"retinad flows: refused by the daemon: {msg['error']}", file=sys.stderr)
                return EXIT_FAILURE
            if "dropped" in msg:
                print(f"retinad flows: {msg['dropped']} records dropped (too slow)",
                      file=sys.stderr)  # fmt: skip
                continue
            if not keep(msg):
                continue
            print(json.dumps(msg, separators=(",", ":")) if args.output == "json" else line(msg),
                  flush=True)  # fmt: skip
            shown += 1
            if args.count and shown >= args.count:
                return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:
        return EXIT_OK
    finally:
        sock.close()
    return EXIT_OK
