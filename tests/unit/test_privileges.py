"""Without privileges, ``retinad check`` and the daemon say so: which capabilities, and how
to grant them; never a traceback, never "bcc could not compile", never "absent".

Run for real: as the ordinary user nobody (``setpriv --reuid``), and as root with CAP_BPF,
CAP_PERFMON and CAP_SYS_ADMIN dropped from the effective and bounding sets, so the kernel
itself refuses bpf() with EPERM.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.test_check import rows

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and util-linux setpriv to drop privileges",
)

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
DROPPED = "-bpf,-perfmon,-sys_admin"
NO_BPF_CAPS = ["setpriv", f"--inh-caps={DROPPED}", f"--bounding-set={DROPPED}"]
FIX = (
    "run retinad as root, or grant it CAP_BPF CAP_PERFMON CAP_NET_ADMIN (CAP_SYS_ADMIN "
    "stands in for the first two): under systemd in the unit's CapabilityBoundingSet= "
    "(and AmbientCapabilities= when User= is not root), as systemd/retinad.service does"
)
NOT_A_FEATURE = "a missing capability, not a missing kernel feature (see capabilities)"


def run(prefix: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, sys.executable, "-m", "retinad", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
    )


@pytest.fixture
def config() -> Iterator[Path]:
    """A config on a free loopback port, in a directory nobody may read."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="retinad-priv-") as d:
        os.chmod(d, 0o755)
        cfg = Path(d) / "retinad.toml"
        cfg.write_text(f'[web]\nlisten_address = ["127.0.0.1:{port}"]\n')
        cfg.chmod(0o644)
        yield cfg


def test_check_as_an_ordinary_user_names_the_privileges() -> None:
    p = run(NOBODY, "check")
    assert p.returncode == 1, p.stdout + p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    t = rows(p.stdout)
    assert t["capabilities"] == (
        "MISSING",
        "yes",
        f"privileges missing: lacking CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON -> {FIX}",
    )
    assert t["tracefs"] == (
        "DENIED",
        "yes",
        "/sys/kernel/tracing/events: permission denied (tracefs is root's, mode 0700; "
        "another uid needs CAP_DAC_READ_SEARCH); mounted, so a missing privilege, not a "
        "missing feature",
    )
    assert t["tc"][:2] == ("DENIED", "yes") and t["tc"][2].endswith(NOT_A_FEATURE)
    # Whether the tracepoint has a reason is unknowable without tracefs, so the source
    # dropreason needs is not probed (the reason row itself is not needed: the kprobe
    # hooks are the other source).
    assert t["kfree_skb_reason"] == (
        "denied",
        "no",
        "not probed: tracefs is not readable by this process",
    )
    assert t["dropreason_source"] == (
        "DENIED",
        "yes",
        f"not probed: tracefs is not readable by this process -> {FIX}",
    )
    # The kprobe PMU is in sysfs, readable by anyone: found, not denied.
    kprobes = Path("/sys/bus/event_source/devices/kprobe/type").is_file()
    assert t["kprobes"][:2] == ("ok" if kprobes else "info", "no")
    assert p.stdout.rstrip().endswith(
        "retinad cannot run with this config: 1 needed item(s) missing, "
        "4 not probed: privileges missing (see capabilities)."
    )


def test_check_without_bpf_capabilities_says_denied_not_absent() -> None:
    p = run(NO_BPF_CAPS, "check")
    assert p.returncode == 1, p.stdout + p.stderr
    t = rows(p.stdout)
    assert t["capabilities"] == (
        "MISSING",
        "yes",
        f"privileges missing: lacking CAP_BPF, CAP_PERFMON -> {FIX}",
    )
    assert t["ringbuf"] == (
        "denied",
        "no",
        f"not probed: bpf() refused (EPERM) without CAP_BPF (or CAP_SYS_ADMIN); {NOT_A_FEATURE}",
    )
    assert t["tc"] == (
        "DENIED",
        "yes",
        "not probed: bpf() refused (EPERM) without CAP_BPF and CAP_NET_ADMIN (or "
        f"CAP_SYS_ADMIN); {NOT_A_FEATURE}",
    )
    assert t["tracepoints"] == (
        "DENIED",
        "yes",
        "not probed: bpf() refused (EPERM) without CAP_BPF and CAP_PERFMON (or "
        f"CAP_SYS_ADMIN); {NOT_A_FEATURE}",
    )
    assert t["fentry"] == ("info", "no", "not probed: lacking CAP_BPF, CAP_PERFMON")
    # tracefs is readable (still uid 0 with DAC override), so it is probed for real
    assert t["tracefs"][0] == "ok"


def test_daemon_without_bpf_capabilities_says_privileges_not_compile(config: Path) -> None:
    p = run(NO_BPF_CAPS, "--config.file", str(config))
    assert p.returncode == 1, p.stdout + p.stderr
    assert "bcc could not compile" not in p.stderr
    assert (
        "cannot load BPF programs: privileges missing: this process lacks CAP_BPF, "
        f"CAP_PERFMON, so the kernel refuses bpf() with EPERM; {FIX}"
    ) in p.stderr, p.stderr


def test_daemon_as_an_ordinary_user_says_privileges(config: Path) -> None:
    p = run(NOBODY, "--config.file", str(config))
    assert p.returncode == 1, p.stdout + p.stderr
    assert "this process lacks CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON" in p.stderr, p.stderr
    p = run(NOBODY, "--config.file", str(config), "--no-collector.packetparser")
    assert p.returncode == 1, p.stdout + p.stderr
    assert (
        "dropreason: tracepoint skb:kfree_skb: /sys/kernel/tracing/events: permission "
        "denied: privileges missing"
    ) in p.stderr, p.stderr
    assert "is tracefs mounted" not in p.stderr


SECCOMP_EXEC = """
import ctypes, os, struct, sys
# A seccomp filter answering EPERM to bpf(2) (x86_64 nr 321) and allowing the rest: the
# kernel refuses bpf() to a process that has every capability, as lockdown or an LSM would.
code = [(0x20, 0, 0, 0), (0x15, 0, 1, 321), (0x06, 0, 0, 0x00050001), (0x06, 0, 0, 0x7FFF0000)]
buf = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in code))
prog = struct.pack("HxxxxxxQ", len(code), ctypes.addressof(buf))
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, 2, ctypes.c_char_p(prog), 0, 0) == 0, ctypes.get_errno()
os.execv(sys.executable, [sys.executable, "-m", "retinad", *sys.argv[1:]])
"""


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the filter uses x86_64's bpf nr")
def test_eperm_with_every_capability_is_not_called_a_privilege_problem() -> None:
    p = subprocess.run(
        [sys.executable, "-c", SECCOMP_EXEC, "check"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
    )
    assert p.returncode == 1, p.stdout + p.stderr
    t = rows(p.stdout)
    assert t["capabilities"][0] == "ok"
    assert t["tc"] == (
        "MISSING",
        "yes",
        "sched_cls rejected: bpf() answered EPERM although this process has CAP_BPF, "
        "CAP_NET_ADMIN (kernel lockdown, an LSM or a seccomp filter?)",
    )
    assert (
        t["ringbuf"][:2] == ("absent", "no")
        and "although this process has CAP_BPF" in (t["ringbuf"][2])
    )
