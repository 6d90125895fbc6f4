"""``retinad top`` against a real retinad serving TLS with basic auth, with the stack's
traffic: driven in a real pseudo-terminal (tmux) by keys and read off the screen, and in
its plain-text form when stdout is a pipe.

The stack (tests/monitoring/stack.py) makes shop/frontend send over twice the bytes of
shop/batch, and shop/db receive over twice the drops of shop/web, so the orders asserted
here hold on a loaded machine.
"""

from __future__ import annotations

import secrets
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest

from tests.daemon_proc import wait_for
from tests.monitoring.stack import Stack, running_stack

TMUX = shutil.which("tmux") or "/usr/bin/tmux"
PASSWORD = "s3cret-" + secrets.token_hex(4)


@dataclass
class Secured:
    stack: Stack
    config: Path
    password_file: Path

    def top(self, *extra: str, password_file: Path | None = None) -> list[str]:
        pw = password_file or self.password_file
        return [
            sys.executable,
            "-m",
            "retinad",
            "top",
            "--config.file",
            str(self.config),
            "--basic-auth.username",
            "ops",
            "--basic-auth.password-file",
            str(pw),
            *extra,
        ]


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """The stack's retinad with a web config: TLS (a self-signed certificate for 127.0.0.1)
    and one basic auth user."""
    work = tmp_path_factory.mktemp("top")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=retinad-test",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(work / "key.pem"),
            "-out",
            str(work / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    (work / "web.yml").write_text(
        "tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n"
        f"basic_auth_users:\n  ops: '{hashed}'\n"
    )
    (work / "password").write_text(PASSWORD + "\n")
    with running_stack("prometheus", work, f'config_file = "{work / "web.yml"}"') as st:
        yield Secured(st, work / "retinad.toml", work / "password")


def section(text: str, title: str, end: str) -> list[str]:
    """The endpoint names of the table between ``title`` and ``end`` lines, top to bottom."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(title))
    rows = []
    for line in lines[start + 1 :]:
        if line.strip().startswith(end):
            break
        words = line.split()
        if words and words[0].startswith("shop/"):
            rows.append(words[0])
    return rows


def test_plain_text_when_not_a_tty_over_tls_with_basic_auth(secured: Secured) -> None:
    done = subprocess.run(
        secured.top("--interval", "1.5"), capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stderr) == (0, "")
    out = done.stdout
    assert f"https://127.0.0.1:{secured.stack.port}/metrics" in out
    assert "naming=prometheus" in out, out
    assert "collectors ok: dropreason, packetparser" in out, out
    assert "\x1b[" not in out and "━" not in out  # no colour, no box drawing
    endpoints = section(out, "ENDPOINTS", "DROPS")
    assert endpoints[:2] == ["shop/frontend", "shop/batch"], out
    by_drops = subprocess.run(
        secured.top("--interval", "1.5", "--sort", "drops", "--filter", "shop/"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    ranked = section(by_drops.stdout, "ENDPOINTS", "DROPS")
    assert ranked.index("shop/db") < ranked.index("shop/web"), by_drops.stdout
    drops = by_drops.stdout.split("DROPS", 1)[1]
    assert any(
        line.split()[:3] == ["NETFILTER_DROP", "ingress", "shop/db"] for line in drops.splitlines()
    ), drops


def test_refuses_without_credentials_and_with_a_wrong_password(
    secured: Secured, tmp_path: Path
) -> None:
    cmd = [sys.executable, "-m", "retinad", "top", "--config.file", str(secured.config)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr == (
        f"retinad top: {secured.config.parent / 'web.yml'}: basic_auth_users is set: pass "
        "--basic-auth.username and --basic-auth.password-file\n"
    )
    wrong = tmp_path / "wrong"
    wrong.write_text("nope\n")
    done = subprocess.run(
        secured.top(password_file=wrong), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert done.stderr == (
        f"retinad top: https://127.0.0.1:{secured.stack.port}/metrics: HTTP 401 Unauthorized "
        "(basic auth: check --basic-auth.username/password-file)\n"
    )


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[list[str]]:
    """A private tmux server (its own socket): the test's terminal, gone afterwards."""
    base = [TMUX, "-S", str(tmp_path / "tmux.sock")]
    yield base
    subprocess.run([*base, "kill-server"], capture_output=True, check=False)


def test_live_view_in_a_terminal_sorts_filters_and_quits_by_key(
    secured: Secured, tmux: list[str]
) -> None:
    # The pseudo-terminal sets the size; a COLUMNS inherited from the test runner would win.
    cmd = "env -u COLUMNS -u LINES " + shlex.join(secured.top("--interval", "1"))
    subprocess.run(
        [*tmux, "new-session", "-d", "-s", "top", "-x", "160", "-y", "60", cmd], check=True
    )

    def screen() -> str:
        done = subprocess.run(
            [*tmux, "capture-pane", "-p", "-t", "top"], capture_output=True, text=True, check=False
        )
        return done.stdout

    def endpoints() -> list[str]:
        text = screen()
        return section(text, "Endpoints", "Drops") if "Endpoints" in text else []

    def until(check: Callable[[], object], what: str, timeout: float = 10.0) -> None:
        try:
            wait_for(check, timeout=timeout, what=what)
        except AssertionError as err:
            raise AssertionError(f"{err}; the screen:\n{screen()}") from None

    def keys(*k: str) -> None:
        subprocess.run([*tmux, "send-keys", "-t", "top", *k], check=True)

    until(
        lambda: endpoints()[:2] == ["shop/frontend", "shop/batch"],
        timeout=30.0,
        what="frontend then batch by bytes on screen",
    )
    assert "sort=bytes" in screen() and "keys: b bytes" in screen()
    keys("d")
    until(
        lambda: (
            (e := endpoints()) and e[0] == "shop/db" and e.index("shop/db") < e.index("shop/web")
        ),
        what="db first (and above web) by drops",
    )
    assert "sort=drops" in screen()
    keys("/", "b", "a", "t", "c", "h")
    until(lambda: "filter: batch_" in screen(), what="the filter being typed")
    keys("Enter")
    until(lambda: endpoints() == ["shop/batch"], what="only batch after the filter")
    assert "filter='batch'" in screen()
    keys("q")
    until(
        lambda: (
            subprocess.run([*tmux, "has-session", "-t", "top"], capture_output=True).returncode != 0
        ),
        what="top quits on q",
    )
