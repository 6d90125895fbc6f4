"""Generate retinad(8) and the bash/zsh completions from the argparse definition.

    python scripts/gen_cli_docs.py           write man/retinad.8, completions/retinad.bash,
                                             completions/_retinad (`make man` runs this)
    python scripts/gen_cli_docs.py --check   exit 1 naming each file that is stale

The flags come from ``retinad.cli.build_parser()`` only, so the man page and the
completions cannot list a flag the program does not have. argparse-manpage writes the
roff and shtab the completion scripts (both well kept PyPI projects, dev dependencies
only: the generated files are committed and shipped, retinad does not import either).
The prose sections (commands, exit status, signals, files, privileges) are written here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import shtab
from argparse_manpage.manpage import Manpage  # type: ignore[import-untyped]

from retinad import __version__
from retinad.cli import build_parser
from retinad.config.load import DEFAULT_CONFIG_PATH

ROOT = Path(__file__).resolve().parents[1]
MAN_PAGE = ROOT / "man" / "retinad.8"
BASH = ROOT / "completions" / "retinad.bash"
ZSH = ROOT / "completions" / "_retinad"

MAN_DATE = "December 2026"
"""The .TH date: when the command line last changed (fixed, so the output is reproducible)."""

FILE_ARGS = {"config_file", "web_config_file", "file"}
"""Destinations of arguments that name a file: completed as paths."""

SECTIONS: list[tuple[str, str]] = [
    (
        "commands",
        """.TP
.B run
Serve the metrics (the default): attach the enabled collectors and serve
\\fB/metrics\\fR until SIGTERM or SIGINT.
.TP
.B check
Probe what this host offers (kernel, BTF, bcc, kernel headers, tracefs, tc, tcx,
tracepoints, ring buffer, capabilities) and what the configuration needs, one row each,
with a verdict. A row is MISSING when the host lacks something needed, DENIED when this
process lacks the privileges to find out.
.TP
.BI check-config " [FILE]"
Validate a configuration file (default the \\fB--config.file\\fR or
"""
        + DEFAULT_CONFIG_PATH
        + """) and exit.
.TP
.B print-default-config
Print the embedded default configuration, every key with its default and a comment.
.TP
.BI flows " [FLAGS]"
Follow a running daemon's flow records live over its flow socket
(\\fB[packetparser.events]\\fR \\fBsocket\\fR, root only), one line each or
\\fB--output json\\fR, filtered by \\fB--name\\fR, \\fB--ip\\fR, \\fB--port\\fR,
\\fB--protocol\\fR, \\fB--direction\\fR, \\fB--interface\\fR; see
\\fBretinad flows --help\\fR.""",
    ),
    (
        "exit status",
        """.TP
.B 0
success
.TP
.B 1
cannot start, or \\fBcheck\\fR found something needed missing
.TP
.B 2
bad configuration or usage""",
    ),
    (
        "signals",
        """.TP
.BR SIGTERM ", " SIGINT
detach everything and exit 0
.TP
.B SIGHUP
reload the configuration; a broken file is logged and the running one stays in force""",
    ),
    (
        "files",
        f""".TP
.I {DEFAULT_CONFIG_PATH}
the configuration (TOML); when absent, the embedded default is used
.TP
.I /usr/share/retinad/bpf
the BPF C sources, compiled with bcc at start-up""",
    ),
    (
        "privileges",
        """retinad needs root, or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (CAP_SYS_ADMIN
stands in for the first two); reading tracefs as another uid needs CAP_DAC_READ_SEARCH.
Under systemd grant them in the unit's CapabilityBoundingSet= (and AmbientCapabilities=
when User= is not root).""",
    ),
    (
        "see also",
        """.BR systemctl (1),
.BR capabilities (7).
retinad's documentation (docs/ in its source, shipped with the package):
CONFIG.md (every key), METRICS.md (every series), DESIGN.md (why).""",
    ),
]


def parser() -> argparse.ArgumentParser:
    p = build_parser()
    for action in p._actions:
        if action.dest in FILE_ARGS:
            action.complete = shtab.FILE  # type: ignore[attr-defined]
    return p


def man_page() -> str:
    p = parser()
    p.epilog = None  # the COMMANDS section says it in full
    page = Manpage(p)
    page.date = MAN_DATE
    page.source = f"retinad {__version__}"
    page.manual = "System Administration"
    page.section = 8
    page.description = "eBPF network observability for Linux hosts, as Prometheus metrics"
    for heading, content in SECTIONS:
        page.add_section(heading, "=", content)
    return str(page)


def outputs() -> dict[Path, str]:
    return {
        MAN_PAGE: man_page(),
        BASH: shtab.complete(parser(), shell="bash"),
        ZSH: shtab.complete(parser(), shell="zsh"),
    }


def main(argv: list[str]) -> int:
    check = argv == ["--check"]
    stale = []
    for path, text in outputs().items():
        if path.exists() and path.read_text() == text:
            continue
        if check:
            stale.append(path.relative_to(ROOT))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    for path in stale:
        print(f"{path} is stale: run `make man`", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
