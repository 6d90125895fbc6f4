"""Compile BPF C in a short-lived child; the long-lived daemon gets only fds.

Why: bcc maps libbcc and LLVM/clang into the process (``import bcc`` alone is 74 MiB
resident, the compile heap more) for a compile that runs once. The daemon instead runs
``retinad __compile-bpf FD`` (the same executable, an internal sub-command hidden from
--help). The child compiles with bcc exactly as before (kernel/compile.py: same C, same -D
defines), loads the programs the request names, and hands every program and map of the
module to the parent in one message over a SOCK_SEQPACKET socket (kernel/fdpass.py), then
leaves with ``os._exit`` so no interpreter or bcc cleanup runs against shared objects.

The parent makes every attachment itself from the program fds (kernel/attach.py for tc,
kernel/tracepoint.py and kernel/kprobe.py for the rest): whatever bcc attached in the
child dies with it.
Maps and programs live as long as an fd refers to them, so the parent's copies keep them.

A failing child (compile error, missing headers, verifier rejection) sends bcc's message
back; ``load`` raises CompileError with it and nothing running changes. bcc's verifier log
goes to the child's stderr, which is the daemon's, as it did in-process.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from retinad.errors import CompileError
from retinad.kernel import bpf_syscall, fdpass, kprobe, tracepoint
from retinad.kernel.fdpass import HandedObject
from retinad.kernel.maps import MapHandle

# "retinad.kernel.loader" propagates to the daemon's "retinad" logger.
_log = logging.getLogger("retinad.kernel.loader")

__all__ = ["LoadedObject", "MapHandle", "ProgramFd", "load"]

CHILD_COMMAND = "__compile-bpf"
"""The internal sub-command (retinad/cli.py dispatches it before parsing flags)."""
TIMEOUT_ENV = "RETINAD_COMPILE_TIMEOUT_SECONDS"
TIMEOUT_SECONDS = 300.0
"""A compile takes about a second on this project's CI host and minutes on an emulated or
very small machine (over 120 s for dropreason_hooks.c in the kernel matrix's TCG guests on a
loaded host); a child silent this long is killed. The environment variable is for such
machines (the kernel matrix sets it), not a setting operators need."""
_MAX_ERROR = 64 * 1024

PROG_KPROBE = 2
PROG_SCHED_CLS = 3
PROG_TRACEPOINT = 5


@dataclass
class ProgramFd:
    """A loaded program by fd (what bcc's ``load_func`` returned: ``.fd``, ``.name``)."""

    name: str
    fd: int
    type: int


class LoadedObject:
    """The programs and maps of one compiled source, held by fd in this process.

    It offers the slice of bcc's ``BPF`` object the plugins use (``obj[b"map"]``,
    ``get_table``, ``load_func``, ``attach_tracepoint``, ``cleanup``) so they change only
    where they load; everything behind it is plain fds.
    """

    KPROBE = PROG_KPROBE
    SCHED_CLS = PROG_SCHED_CLS
    TRACEPOINT = PROG_TRACEPOINT

    def __init__(
        self,
        source: Path,
        objects: list[HandedObject],
        *,
        child_pid: int = 0,
        child_status: int | None = None,
    ) -> None:
        self.source = source
        self.child_pid = child_pid
        """The compile child's pid and exit status (diagnostics and tests)."""
        self.child_status = child_status
        self.programs: dict[str, ProgramFd] = {}
        self.maps: dict[str, MapHandle] = {}
        self._tracepoints: dict[str, int] = {}
        self._kprobes: dict[tuple[str, bool], int] = {}
        try:
            for o in objects:
                if o.kind == "prog":
                    self.programs[o.name] = ProgramFd(o.name, o.fd, o.type)
                else:
                    self.maps[o.name] = MapHandle(o.fd, o.name)
        except BaseException:
            fdpass.close_all([o.fd for o in objects])
            raise

    def __getitem__(self, name: bytes | str) -> MapHandle:
        key = name.decode() if isinstance(name, bytes) else name
        try:
            return self.maps[key]
        except KeyError:
            raise KeyError(f"{self.source}: no map {key!r}") from None

    def get_table(self, name: bytes | str) -> MapHandle:
        return self[name]

    def load_func(self, name: bytes | str, prog_type: int) -> ProgramFd:
        """The handed-over program ``name``; it must have been requested with this type."""
        key = name.decode() if isinstance(name, bytes) else name
        prog = self.programs.get(key)
        if prog is None:
            raise KeyError(f"{self.source}: program {key!r} was not loaded by the child")
        if prog.type != prog_type:
            raise ValueError(f"{self.source}: program {key!r} is type {prog.type}, not {prog_type}")
        return prog

    def attach_tracepoint(self, tp: bytes | str, fn_name: bytes | str) -> None:
        """Attach program ``fn_name`` to ``category:event`` from this process (see
        kernel/tracepoint.py for why not bcc's attachment)."""
        spec = tp.decode() if isinstance(tp, bytes) else tp
        category, _, event = spec.partition(":")
        if spec in self._tracepoints:
            raise OSError(f"{spec}: already attached")
        prog = self.load_func(fn_name, PROG_TRACEPOINT)
        self._tracepoints[spec] = tracepoint.attach(prog.fd, category, event)

    def detach_tracepoint(self, tp: bytes | str) -> None:
        spec = tp.decode() if isinstance(tp, bytes) else tp
        fd = self._tracepoints.pop(spec, None)
        if fd is None:
            raise KeyError(f"{spec}: not attached")
        tracepoint.detach(fd)

    def attach_kprobe(self, event: bytes | str, fn_name: bytes | str) -> None:
        """Run program ``fn_name`` on entry to kernel function ``event`` (kernel/kprobe.py:
        the kprobe PMU, so the probe dies with this process)."""
        self._attach_probe(event, fn_name, retprobe=False)

    def attach_kretprobe(self, event: bytes | str, fn_name: bytes | str) -> None:
        """Run program ``fn_name`` when kernel function ``event`` returns."""
        self._attach_probe(event, fn_name, retprobe=True)

    def detach_kprobe(self, event: bytes | str) -> None:
        self._detach_probe(event, retprobe=False)

    def detach_kretprobe(self, event: bytes | str) -> None:
        self._detach_probe(event, retprobe=True)

    def _attach_probe(self, event: bytes | str, fn_name: bytes | str, *, retprobe: bool) -> None:
        function = event.decode() if isinstance(event, bytes) else event
        if (function, retprobe) in self._kprobes:
            raise OSError(f"{function}: already attached")
        prog = self.load_func(fn_name, PROG_KPROBE)
        self._kprobes[(function, retprobe)] = kprobe.attach(prog.fd, function, retprobe=retprobe)

    def _detach_probe(self, event: bytes | str, *, retprobe: bool) -> None:
        function = event.decode() if isinstance(event, bytes) else event
        fd = self._kprobes.pop((function, retprobe), None)
        if fd is None:
            raise KeyError(f"{function}: not attached")
        kprobe.detach(fd)

    def cleanup(self) -> None:
        """Detach tracepoints and kprobes and close every fd (idempotent). tc attachments
        are the attacher's to remove; closing the program fd does not detach a held link."""
        for spec in list(self._tracepoints):
            self.detach_tracepoint(spec)
        for function, retprobe in list(self._kprobes):
            self._detach_probe(function, retprobe=retprobe)
        for prog in self.programs.values():
            if prog.fd >= 0:
                os.close(prog.fd)
                prog.fd = -1
        for m in self.maps.values():
            m.close()


def load(
    bpf_dir: Path,
    filename: str,
    defines: Mapping[str, int | str] | None = None,
    programs: Mapping[str, int] | None = None,
    *,
    timeout: float | None = None,
) -> LoadedObject:
    """Compile ``bpf_dir/filename`` in a child and return its programs and maps by fd.

    ``programs`` names the functions to load, with their BPF program type. Raises
    CompileError with bcc's message (or why the child failed) and leaves nothing behind.
    """
    src = bpf_dir.resolve() / filename
    if timeout is None:
        timeout = compile_timeout()
    request = {
        "bpf_dir": str(bpf_dir.resolve()),
        "filename": filename,
        "defines": dict(defines or {}),
        "programs": dict(programs or {}),
    }
    started = time.monotonic()
    parent, child = fdpass.socketpair()
    try:
        proc = subprocess.Popen(
            [*child_argv(), CHILD_COMMAND, str(child.fileno())],
            pass_fds=[child.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=sys.stderr.fileno(),
        )
    except OSError as err:
        parent.close()
        child.close()
        raise CompileError(f"{src}: cannot start the compile child: {err}") from err
    child.close()
    try:
        fdpass.send(parent, request)
        parent.settimeout(timeout)
        try:
            header, fds = fdpass.receive(parent)
        except TimeoutError:
            raise CompileError(
                f"{src}: the compile child gave no answer in {timeout:.0f} s"
            ) from None
        except fdpass.HandoverError as err:
            raise CompileError(f"{src}: compile child {_exit_status(proc)}: {err}") from None
        if not header.get("ok"):
            fdpass.close_all(fds)
            raise CompileError(str(header.get("error", f"{src}: the compile child failed")))
        try:
            objects = fdpass.receive_objects(header, fds)
        except fdpass.HandoverError as err:
            raise CompileError(f"{src}: bad hand-over from the compile child: {err}") from None
        parent.close()
        status = _reap(proc)
        # Start-up time is mostly these children (docs/PERFORMANCE.md reads this line).
        _log.info("compiled %s in a child in %.2f s", filename, time.monotonic() - started)
        return LoadedObject(src, objects, child_pid=proc.pid, child_status=status)
    finally:
        parent.close()
        _reap(proc)


def compile_timeout() -> float:
    """TIMEOUT_SECONDS, or ``$RETINAD_COMPILE_TIMEOUT_SECONDS`` (seconds, > 0) when set;
    a bad value is a CompileError naming the variable, not a traceback."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return TIMEOUT_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise CompileError(f"{TIMEOUT_ENV}={raw!r}: expected a number of seconds above 0")
    return value


def child_argv() -> list[str]:
    """How to run this same program again: the interpreter and package, not a PATH lookup.

    The folder this ``retinad`` package was imported from goes first on the child's path:
    the packages run ``python3 -I`` with /usr/lib/retinad put on sys.path by /usr/bin/retinad,
    which neither ``-m retinad`` nor PYTHONPATH (ignored under -I) would give the child.
    """
    return python_argv(
        "import runpy; runpy.run_module('retinad', run_name='__main__', alter_sys=True)"
    )


def python_argv(code: str) -> list[str]:
    """``python -c code`` with this ``retinad`` package first on the path and the parent's
    isolation flags (see child_argv); also used by plugins' own short-lived children."""
    import retinad

    home = str(Path(retinad.__file__).resolve().parent.parent)
    return [
        sys.executable,
        *_isolation_flags(),
        "-c",
        f"import sys; sys.path.insert(0, {home!r}); {code}",
    ]


def _isolation_flags() -> list[str]:
    """The parent's -I/-E/-s, so the child sees exactly the modules the parent sees."""
    flags = sys.flags
    if flags.isolated:
        return ["-I"]
    return [f for f, on in (("-E", flags.ignore_environment), ("-s", flags.no_user_site)) if on]


def _reap(proc: subprocess.Popen[bytes]) -> int:
    try:
        return proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _exit_status(proc: subprocess.Popen[bytes]) -> str:
    try:
        rc = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        return "still running"
    return f"killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"


# --- the child side -------------------------------------------------------------------------


def child_main(fd: int) -> NoReturn:
    """Run the compile request that arrives on socket ``fd``, answer, and ``os._exit``.

    Never returns: ``os._exit`` skips interpreter shutdown and bcc's atexit cleanup, which
    would otherwise detach and close what the parent now shares.
    """
    status = 0
    try:
        sock = socket.socket(fileno=fd)
        request = json.loads(sock.recv(fdpass.MAX_MESSAGE))
        try:
            objects = _compile_and_load(request)
        except Exception as err:
            status = 1
            fdpass.send(sock, {"ok": False, "error": str(err)[:_MAX_ERROR]})
        else:
            fdpass.send_objects(sock, objects)
    except BaseException as err:  # the request itself was bad: say so on stderr
        print(f"retinad {CHILD_COMMAND}: {err}", file=sys.stderr)
        status = 2
    sys.stderr.flush()
    os._exit(status)


def _compile_and_load(request: dict[str, Any]) -> list[HandedObject]:
    from bcc.libbcc import lib

    from retinad.kernel.compile import compile_program

    bpf_dir = Path(request["bpf_dir"])
    src = bpf_dir / request["filename"]
    b = compile_program(bpf_dir, request["filename"], request["defines"])
    objects: list[HandedObject] = []
    for name, prog_type in request["programs"].items():
        try:
            fn = b.load_func(name.encode(), int(prog_type))
        except Exception as err:
            raise CompileError(f"{src}: loading program {name}: {err}") from err
        objects.append(HandedObject(name, "prog", bpf_syscall.prog_info(fn.fd).type, fn.fd))
    lib.bpf_num_tables.restype = ctypes.c_size_t
    lib.bpf_num_tables.argtypes = [ctypes.c_void_p]
    lib.bpf_table_name.restype = ctypes.c_char_p
    lib.bpf_table_name.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.bpf_table_fd_id.restype = ctypes.c_int
    lib.bpf_table_fd_id.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    for i in range(lib.bpf_num_tables(b.module)):
        name = lib.bpf_table_name(b.module, i).decode()
        fd = lib.bpf_table_fd_id(b.module, i)
        if fd < 0:
            raise CompileError(f"{src}: map {name} has no fd")
        objects.append(HandedObject(name, "map", bpf_syscall.map_info(fd).type, fd))
    return objects
