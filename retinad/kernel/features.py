"""Probe what this host offers, once, for both the daemon and ``retinad check``.

Each probe asks the kernel itself where it can (libbpf's program/map type probes load a
trivial object and report whether the verifier accepts it) instead of comparing version
numbers, because distributions backport features and disable others (this project's own
CI kernel is 6.18 with kprobes compiled out). Probes never attach anything.
"""

from __future__ import annotations

import ctypes
import errno
import platform
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

from retinad.kernel import kprobe

Status = Literal["ok", "missing", "info", "denied"]
"""ok / missing (the kernel or host lacks it) / info / denied: this process lacks the
privileges to find out, which says nothing about the kernel."""

BTF_PATH = Path("/sys/kernel/btf/vmlinux")
TRACEFS_DIRS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))

# enum bpf_prog_type / bpf_map_type values (uapi/linux/bpf.h; stable ABI numbers)
_PROG_SCHED_CLS = 3
_PROG_TRACEPOINT = 5
_PROG_TRACING = 26
_MAP_RINGBUF = 27

_CAPS = {
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_NET_ADMIN": 12,
    "CAP_SYS_ADMIN": 21,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
}

PRIVILEGE_FIX = (
    "run retinad as root, or grant it CAP_BPF CAP_PERFMON CAP_NET_ADMIN (CAP_SYS_ADMIN "
    "stands in for the first two): under systemd in the unit's CapabilityBoundingSet= "
    "(and AmbientCapabilities= when User= is not root), as systemd/retinad.service does"
)
"""How to grant what retinad needs; said wherever a missing privilege is found."""


@dataclass(frozen=True)
class Probe:
    """One line of ``retinad check``."""

    name: str
    status: Status
    detail: str
    fix: str = ""
    """What to do when status is "missing"."""


def kernel_release() -> str:
    return platform.release()


def kernel_version() -> tuple[int, int]:
    parts = kernel_release().split(".")
    try:
        return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)
    except (IndexError, ValueError):
        return (0, 0)


@cache
def _libbpf() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libbpf.so.1", use_errno=True)
    except OSError:
        return None


class PermissionDenied(Exception):
    """A probe's bpf() call was refused with EPERM: unknown, not unsupported."""


def _probe(fn: Callable[[], int]) -> bool:
    """Run one libbpf probe; raise PermissionDenied when the kernel said EPERM.

    libbpf reports "not supported" (0) both when the verifier rejects the type and when
    bpf() refuses an unprivileged caller; only errno tells the two apart (fentry on this
    project's CI kernel answers EPERM even to root, so callers also check capabilities).
    """
    ctypes.set_errno(0)
    ok = fn() == 1
    if not ok and ctypes.get_errno() in (errno.EPERM, errno.EACCES):
        raise PermissionDenied()
    return ok


def prog_type_supported(prog_type: int) -> bool | None:
    """libbpf_probe_bpf_prog_type: None when libbpf is absent; PermissionDenied on EPERM."""
    lib = _libbpf()
    if lib is None:
        return None
    return _probe(lambda: int(lib.libbpf_probe_bpf_prog_type(prog_type, None)))


def map_type_supported(map_type: int) -> bool | None:
    """libbpf_probe_bpf_map_type: None when libbpf is absent; PermissionDenied on EPERM."""
    lib = _libbpf()
    if lib is None:
        return None
    return _probe(lambda: int(lib.libbpf_probe_bpf_map_type(map_type, None)))


def tracefs_dir() -> Path | None:
    for d in TRACEFS_DIRS:
        try:
            if (d / "events").is_dir():
                return d
        except PermissionError:  # mounted but root-only (mode 0700): see tracefs_denied
            continue
    return None


def tracefs_denied() -> Path | None:
    """The tracefs ``events`` directory that exists but this process may not read (tracefs
    is mode 0700, root's: another uid needs CAP_DAC_READ_SEARCH), or None."""
    for d in TRACEFS_DIRS:
        try:
            (d / "events").stat()
        except PermissionError:
            return d / "events"
        except OSError:
            continue
    return None


def kernel_headers_dir() -> Path:
    return Path("/lib/modules") / kernel_release() / "build"


def has_kernel_headers() -> bool:
    """bcc compiles against build/ (generated config) and source/ (the headers; Debian
    splits them into -amd64 and -common); skbuff.h is what our programs include."""
    build = kernel_headers_dir()
    source = build.parent / "source"
    generated = (build / "include" / "generated" / "autoconf.h").exists()
    skbuff = any((d / "include" / "linux" / "skbuff.h").exists() for d in (build, source))
    return generated and skbuff


def tracepoint_has_field(category: str, event: str, field: str) -> bool:
    d = tracefs_dir()
    if d is None:
        return False
    fmt = d / "events" / category / event / "format"
    try:
        return f" {field};" in fmt.read_text()
    except OSError:
        return False


def has_kprobes() -> bool:
    """The kprobe PMU exists only in kernels built with CONFIG_KPROBES; it is how the daemon
    attaches kprobes (kernel/kprobe.py), so it is what the fallback needs, not tracefs's
    kprobe_events."""
    return kprobe.available()


def has_fentry() -> bool:
    """BPF_PROG_TYPE_TRACING (fentry/fexit) loads; EPERM/absent kernels say no."""
    try:
        return bool(prog_type_supported(_PROG_TRACING))
    except PermissionDenied:
        return False


@cache
def has_tcx() -> bool:
    """tcx (BPF_TCX_INGRESS/EGRESS links, 6.6+): the running kernel's BTF knows the attach type."""
    try:
        from retinad.kernel.btf import enum_has_member
    except ImportError:  # pragma: no cover - btf.py ships with retinad
        return kernel_version() >= (6, 6)
    try:
        return enum_has_member(BTF_PATH, "bpf_attach_type", "BPF_TCX_INGRESS")
    except Exception:
        return kernel_version() >= (6, 6)


DropSourceKind = Literal["tracepoint", "hooks", "none", "denied"]
HOOK_POINTS = ("nf_hook_slow", "nf_nat_inet_fn", "tcp_v4_connect", "inet_csk_accept",
               "__nf_conntrack_confirm")  # fmt: skip
"""The fallback source's kprobe targets (Microsoft Retina's dropreason hook points)."""


@dataclass(frozen=True)
class DropSource:
    """Which dropreason source runs here, and why (``retinad check`` and the start-up log)."""

    kind: DropSourceKind
    why: str


def dropreason_source(requested: str = "auto") -> DropSource:
    """Choose dropreason's source from what this kernel offers.

    "auto" prefers the tracepoint wherever it has the reason field: it sees every freed
    packet with the kernel's own, finer reason, while the hooks add a kprobe pair to
    nf_hook_slow, which runs for every packet that meets a netfilter hook. The hooks
    (kprobes) are the fallback for kernels before 5.17, or chosen by [dropreason] source.
    """
    if requested != "hooks" and tracefs_dir() is None and tracefs_denied() is not None:
        # whether the tracepoint has a reason is unknowable here: a privilege, not a kernel
        return DropSource("denied", "not probed: tracefs is not readable by this process")
    has_reason = tracepoint_has_field("skb", "kfree_skb", "reason")
    kprobes = has_kprobes()
    hooks_why = "kprobes on " + ", ".join(HOOK_POINTS) + " (Retina's drop categories)"
    if requested == "tracepoint" or (requested == "auto" and has_reason):
        if has_reason:
            why = "tracepoint skb:kfree_skb with kernel drop reasons"
            if requested == "auto" and kprobes:
                why += " (wins over the kprobe hooks: every drop, finer reasons)"
            return DropSource("tracepoint", why)
        return DropSource("none", "skb:kfree_skb has no reason field (kernel 5.17+ has)")
    if kprobes:
        why = hooks_why + ("" if has_reason else "; skb:kfree_skb has no reason field")
        return DropSource("hooks", why)
    if requested == "hooks":
        return DropSource("none", "source = hooks needs kprobes (CONFIG_KPROBES)")
    return DropSource("none", "skb:kfree_skb has no reason field and kprobes are unavailable")


def effective_caps() -> set[str]:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                mask = int(line.split()[1], 16)
                return {name for name, bit in _CAPS.items() if mask >> bit & 1}
    except OSError:
        pass
    return set()


def lacking_capabilities(caps: set[str] | None = None) -> list[str]:
    """The capabilities retinad needs that ``caps`` (default: this process's effective
    set) lacks: CAP_NET_ADMIN (tc attach over netlink) and CAP_BPF + CAP_PERFMON (load
    programs and maps; tracepoints and reads of kernel memory), for which CAP_SYS_ADMIN
    stands in (as it does on kernels before 5.8, which have neither)."""
    caps = effective_caps() if caps is None else caps
    lacking = [] if "CAP_NET_ADMIN" in caps else ["CAP_NET_ADMIN"]
    if "CAP_SYS_ADMIN" not in caps:
        lacking += [c for c in ("CAP_BPF", "CAP_PERFMON") if c not in caps]
    return sorted(lacking)


def bpf_privilege_problem() -> str | None:
    """Why this process may not load retinad's BPF programs, or None when it has what it
    needs. Asked when bcc fails, because bcc reports an EPERM map or program load only as
    "Failed to compile BPF module" (and prints the EPERM to stderr)."""
    lacking = lacking_capabilities()
    if not lacking:
        return None
    return (
        f"privileges missing: this process lacks {', '.join(lacking)}, so the kernel "
        f"refuses bpf() with EPERM; {PRIVILEGE_FIX}"
    )


def bcc_version() -> str | None:
    """The installed bcc's version, read without importing it: the long-lived daemon must
    not map libbcc/LLVM (it compiles in a child, kernel/loader.py). None if absent."""
    import importlib.metadata
    import importlib.util

    if importlib.util.find_spec("bcc") is None:
        return None
    try:
        return importlib.metadata.version("bcc")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def bcc_import_version() -> str | None:
    """The version of a bcc that really imports (libbcc loads): what the compile child
    needs. ``retinad check`` runs this; it is a short-lived process, so the import is
    harmless there."""
    try:
        import bcc
    except (ImportError, OSError):
        return None
    return str(getattr(bcc, "__version__", "unknown"))


def event_transport(wanted: str) -> str:
    """The flow-event transport for ``[packetparser.events].transport``: "auto" is ringbuf
    where libbpf's map probe says the kernel has one, else perf (every kernel retinad runs
    on has perf event arrays). May raise PermissionDenied, like the probe."""
    if wanted != "auto":
        return wanted
    return "ringbuf" if map_type_supported(_MAP_RINGBUF) else "perf"
