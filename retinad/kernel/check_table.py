"""The rows of ``retinad check``: every probe of kernel/features.py put in order, each with
a status (ok / missing / info / denied), what it found and how to fix it.

Why apart from features.py: features.py answers questions (does the kernel have X, may
this process find out) for the daemon and for check alike; this module only turns the
answers into the table an operator reads, which the daemon never needs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from retinad.kernel.features import (
    _MAP_RINGBUF,
    _PROG_SCHED_CLS,
    _PROG_TRACEPOINT,
    BTF_PATH,
    PRIVILEGE_FIX,
    PermissionDenied,
    Probe,
    _libbpf,
    bcc_import_version,
    dropreason_source,
    effective_caps,
    event_transport,
    has_fentry,
    has_kernel_headers,
    has_kprobes,
    has_tcx,
    kernel_headers_dir,
    kernel_release,
    kernel_version,
    lacking_capabilities,
    map_type_supported,
    prog_type_supported,
    tracefs_denied,
    tracefs_dir,
    tracepoint_has_field,
)


def _denied(name: str, needs: str) -> Probe:
    """The row of a probe that could not run for lack of privileges."""
    return Probe(
        name,
        "denied",
        f"not probed: bpf() refused (EPERM) without {needs}; a missing capability, "
        "not a missing kernel feature (see capabilities)",
    )


def _yes(
    probe: Callable[[], bool | None],
    name: str,
    yes: str,
    no: str,
    *,
    needs: tuple[str, ...],
    fix: str = "",
) -> Probe:
    """A kernel-feature row from a libbpf probe; ``needs`` are the capabilities the probe
    itself requires (CAP_SYS_ADMIN stands in for each), so an EPERM for lack of them reads
    as "denied", never as "missing"."""
    try:
        ok = probe()
    except PermissionDenied:
        caps = effective_caps()
        if "CAP_SYS_ADMIN" not in caps and not set(needs) <= caps:
            return _denied(name, " and ".join(needs) + " (or CAP_SYS_ADMIN)")
        return Probe(
            name,
            "missing",
            f"{no}: bpf() answered EPERM although this process has {', '.join(needs)} "
            "(kernel lockdown, an LSM or a seccomp filter?)",
        )
    if ok is None:
        return Probe(name, "missing", "libbpf.so.1 not found", "install libbpf1 (comes with bcc)")
    return Probe(name, "ok", yes) if ok else Probe(name, "missing", no, fix)


def flow_events_probe(wanted: str) -> Probe:
    """The ``flow_events`` row of ``retinad check``: which transport the daemon would use."""
    if _libbpf() is None:
        return Probe("flow_events", "missing", "libbpf.so.1 not found (the event reader)",
                     "install libbpf1")  # fmt: skip
    try:
        chosen = event_transport(wanted)
        ringbuf = bool(map_type_supported(_MAP_RINGBUF))
    except PermissionDenied:
        return _denied("flow_events", "CAP_BPF (or CAP_SYS_ADMIN)")
    if chosen == "ringbuf" and not ringbuf:
        fix = 'set [packetparser.events].transport = "perf" or "auto"'
        return Probe("flow_events", "missing", "transport ringbuf: no ring buffer (5.8+)", fix)
    if wanted != "auto":
        how = "configured"
    else:
        how = "auto: " + ("the kernel has a ring buffer" if ringbuf else "no ring buffer")
    return Probe("flow_events", "ok", f"transport {chosen} ({how})")


def run_probes(
    docker_host: str = "unix:///var/run/docker.sock", dropreason_request: str = "auto"
) -> list[Probe]:
    """Every probe, in the order ``retinad check`` prints them; the docker row looks at
    ``docker_host`` (the configured [resolvers.docker].host), the dropreason_source row at
    ``dropreason_request`` (the configured [dropreason] source)."""
    rel = kernel_release()
    ver = kernel_version()
    probes: list[Probe] = []
    add = probes.append
    add(
        Probe("kernel", "ok", rel)
        if ver >= (5, 8)
        else Probe("kernel", "missing", rel, "retinad needs Linux 5.8 or newer")
    )
    add(
        Probe("btf", "ok", str(BTF_PATH))
        if BTF_PATH.exists()
        else Probe(
            "btf", "missing", f"{BTF_PATH} absent", "a kernel built with CONFIG_DEBUG_INFO_BTF=y"
        )
    )
    bv = bcc_import_version()
    add(
        Probe("bcc", "ok", f"python bcc {bv}")
        if bv
        else Probe(
            "bcc",
            "missing",
            "python module bcc not importable",
            "apt-get install python3-bpfcc (Debian/Ubuntu) or dnf install python3-bcc (RHEL)",
        )
    )
    hdr = kernel_headers_dir()
    add(
        Probe("kernel_headers", "ok", str(hdr.resolve()))
        if has_kernel_headers()
        else Probe(
            "kernel_headers",
            "missing",
            f"no kernel headers at {hdr} (include/generated/autoconf.h, include/linux/skbuff.h)",
            f"apt-get install linux-headers-{rel} (or linux-headers-amd64 and link "
            f"{hdr} to /usr/src/linux-headers-<ver>-amd64; scripts/setup.sh does this)",
        )
    )
    tdir = tracefs_dir()
    tdenied = None if tdir else tracefs_denied()
    add(
        Probe("tracefs", "ok", str(tdir))
        if tdir
        else Probe(
            "tracefs",
            "denied",
            f"{tdenied}: permission denied (tracefs is root's, mode 0700; another uid needs "
            "CAP_DAC_READ_SEARCH); mounted, so a missing privilege, not a missing feature",
        )
        if tdenied
        else Probe(
            "tracefs", "missing", "not mounted", "mount -t tracefs tracefs /sys/kernel/tracing"
        )
    )
    add(
        _yes(
            lambda: prog_type_supported(_PROG_SCHED_CLS),
            "tc",
            "sched_cls programs load",
            "sched_cls rejected",
            needs=("CAP_BPF", "CAP_NET_ADMIN"),
        )
    )
    add(
        Probe("tcx", "ok", "tcx links (BPF_TCX_INGRESS/EGRESS)")
        if has_tcx()
        else Probe("tcx", "info", "no tcx: clsact qdisc + bpf filter will be used")
    )
    add(
        _yes(
            lambda: prog_type_supported(_PROG_TRACEPOINT),
            "tracepoints",
            "tracepoint programs load",
            "tracepoint programs rejected",
            needs=("CAP_BPF", "CAP_PERFMON"),
        )
    )
    add(
        Probe("kfree_skb_reason", "ok", "skb:kfree_skb has a reason field")
        if tracepoint_has_field("skb", "kfree_skb", "reason")
        else Probe(
            "kfree_skb_reason",
            "denied",
            "not probed: tracefs is not readable by this process",
        )
        if tdenied
        else Probe(
            "kfree_skb_reason",
            "missing",
            "skb:kfree_skb has no reason field",
            "drop reasons need Linux 5.17+",
        )
    )
    add(
        _yes(
            lambda: map_type_supported(_MAP_RINGBUF),
            "ringbuf",
            "BPF ring buffer",
            "no ring buffer (5.8+)",
            needs=("CAP_BPF",),
        )
    )
    bpf_lacking = [c for c in lacking_capabilities() if c != "CAP_NET_ADMIN"]
    add(
        Probe("kprobes", "ok", "kprobe PMU present (dropreason's fallback hooks can run)")
        if has_kprobes()
        else Probe(
            "kprobes",
            "info",
            "unavailable (CONFIG_KPROBES off): no dropreason fallback hooks",
        )
    )
    add(
        Probe("fentry", "ok", "fentry/fexit programs load (unused: the fallback uses kprobes)")
        if has_fentry()
        # fentry answers EPERM even to root on some kernels: only a lacking capability
        # makes that EPERM a privilege problem
        else Probe("fentry", "info", f"not probed: lacking {', '.join(bpf_lacking)}")
        if bpf_lacking
        else Probe("fentry", "info", "unavailable (the dropreason fallback uses kprobes)")
    )
    src = dropreason_source(dropreason_request)
    add(
        Probe("dropreason_source", "missing", src.why, "a 5.17+ kernel, or one with kprobes")
        if src.kind == "none"
        else Probe("dropreason_source", "denied", src.why, PRIVILEGE_FIX)
        if src.kind == "denied"
        else Probe("dropreason_source", "ok", f"{src.kind}: {src.why}")
    )
    caps = effective_caps()
    lacking = lacking_capabilities(caps)
    add(
        Probe("capabilities", "ok", ", ".join(sorted(caps)))
        if not lacking
        else Probe(
            "capabilities",
            "missing",
            f"privileges missing: lacking {', '.join(lacking)}",
            PRIVILEGE_FIX,
        )
    )
    scheme, _, rest = docker_host.partition("://")
    if scheme == "unix":
        sock = Path(rest)
        add(Probe("docker_socket", "info", f"{sock} {'present' if sock.exists() else 'absent'}"))
    else:
        add(Probe("docker_socket", "info", f"{docker_host} (a network address: not probed)"))
    kube = os.environ.get("KUBECONFIG") or (
        "in-cluster" if os.environ.get("KUBERNETES_SERVICE_HOST") else ""
    )
    add(Probe("kube_config", "info", kube or "none (not in a pod, KUBECONFIG unset)"))
    return probes
