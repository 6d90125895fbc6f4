"""Measure retinad's resident memory and start-to-READY time, optionally over a soak.

Usage (as root, from the repository root, with the dev venv):

    .venv/bin/python scripts/rss-soak.py --config default --soak 0 --runs 3
    .venv/bin/python scripts/rss-soak.py --config advanced-docker --soak 300

``--config default`` is the embedded default config (packetparser + dropreason, basic);
``advanced-docker`` is advanced mode with the docker resolver (order docker, host);
``advanced-kubernetes`` the kubernetes resolver against a kube-apiserver of
tests/kube_cluster.py started for the run (pods created and deleted as churn).
``--soak N`` runs N seconds of traffic and endpoint churn: UDP to every soak container's
address on the docker bridge and to a closed loopback port (kernel drops), a container
started every 2 s and the oldest removed past 6 (each a new veth and endpoint), and a
scrape of /metrics every second. Containers carry the label retinad-lean-soak=1 and a
``lean-soak-`` name; all are removed at the end. ``--source DIR`` runs another checkout's
retinad (PYTHONPATH), e.g. an ``git archive`` of main for the before figures.
``--trim`` asks the daemon to malloc_trim(0) after the soak (freed memory glibc kept vs
live memory); ``--tracemalloc DIR`` diffs Python heap snapshots taken a minute apart.
After READY it prints the daemon's log lines up to "ready" with their offsets (where
start-up time goes) and a bare interpreter start as the machine-speed baseline.

Prints one line per sample (seconds, VmRSS MiB) and a summary; the figures in
docs/PERFORMANCE.md come from this script.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.daemon_proc import NotifySocket

CONFIGS = {
    "default": None,
    "advanced-docker": '[metrics]\nmode = "advanced"\n[resolvers]\norder = ["docker", "host"]\n',
    # The same with a 30 s grace period: vanished endpoints' series and keys go after 30 s
    # instead of 300 s, so a soak of a few minutes reaches the steady state with churn.
    "advanced-docker-grace30": '[metrics]\nmode = "advanced"\n[resolvers]\n'
    'order = ["docker", "host"]\ngrace_period_seconds = 30\n',
    # Without dropreason: what the BTF parse at its start leaves behind (VmHWM ~100 MiB).
    "advanced-docker-no-dropreason": '[metrics]\nmode = "advanced"\n[resolvers]\n'
    'order = ["docker", "host"]\ngrace_period_seconds = 30\n[dropreason]\nenabled = false\n',
    # Kubernetes: the cached kube-apiserver of tests/kube_cluster.py on loopback, scope
    # cluster (pods, ReplicaSets, Jobs, Services, the apiserver's Endpoints: all five
    # watches); {kubeconfig} and {node} are filled in at start.
    "advanced-kubernetes": '[metrics]\nmode = "advanced"\n[resolvers]\n'
    'order = ["kubernetes", "host"]\ngrace_period_seconds = 30\n'
    '[resolvers.kubernetes]\nkubeconfig = "{kubeconfig}"\nnode_name = "{node}"\n'
    'scope = "cluster"\n',
}
KUBE_NODE = "lean-soak-node"


def breakdown(log: Path) -> list[tuple[float, str]]:
    """The daemon's info lines up to "ready", as (seconds after "starting retinad", text):
    where start-up time goes (web up, each plugin compiled and attached)."""
    out: list[tuple[float, str]] = []
    t0 = None
    for line in log.read_text(errors="replace").splitlines():
        m = re.match(r"ts=(\S+) level=info logger=(\S+) msg=\"(.*)\"$", line)
        if not m:
            continue
        at = datetime.datetime.fromisoformat(m[1].replace("Z", "+00:00")).timestamp()
        t0 = at if t0 is None else t0
        out.append((at - t0, f"{m[2]}: {m[3][:90]}"))
        if m[3].startswith("ready"):
            break
    return out


def python_start_seconds() -> float:
    """Wall time of a bare interpreter start and exit: the machine-speed baseline that
    start-up times are divided by, taken in the same run (the machine is shared)."""
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.monotonic() - t0


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the daemon and its reaped children (the compile children), in
    seconds: the start-up cost that machine load does not inflate, unlike wall time."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Run under --tracemalloc: the daemon with a SIGUSR2 handler that starts tracemalloc at the
# first signal (the soak's start: tracing the BTF parse would take minutes) and at each later
# one writes a snapshot (after a gc) to $RETINAD_TM_DIR/snap-N.pickle, plus live-object
# counts by type.
TRACEMALLOC_MAIN = """
import collections, gc, json, os, signal, sys, tracemalloc
n = [0]
def dump(signum, frame):
    if not tracemalloc.is_tracing():  # the first signal starts tracing, after start-up
        tracemalloc.start(12)
        return
    gc.collect()
    d = os.environ["RETINAD_TM_DIR"]
    tracemalloc.take_snapshot().dump(f"{d}/snap-{n[0]}.pickle")
    counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    with open(f"{d}/types-{n[0]}.json", "w") as f:
        json.dump(dict(counts.most_common(300)), f)
    n[0] += 1
def trim(signum, frame):  # how much of RSS is freed memory glibc keeps
    import ctypes
    rss = lambda: [l.split()[1] for l in open("/proc/self/status") if l.startswith("VmRSS")][0]
    before = rss()
    ctypes.CDLL(None).malloc_trim(0)
    with open(os.environ["RETINAD_TM_DIR"] + "/trim.txt", "a") as f:
        f.write(f"VmRSS before malloc_trim {before} kB, after {rss()} kB\\n")
signal.signal(signal.SIGUSR2, dump)
signal.signal(signal.SIGUSR1, trim)
from retinad.cli import main
sys.exit(main(sys.argv[1:]))
"""


def start(
    config: str,
    workdir: Path,
    source: str | None,
    tm_dir: Path | None = None,
    kubeconfig: Path | None = None,
) -> tuple[subprocess.Popen[bytes], float, int]:
    port = free_port()
    head = ["-c", TRACEMALLOC_MAIN] if tm_dir else ["-m", "retinad"]
    args = [sys.executable, *head, "--web.listen-address", f"127.0.0.1:{port}"]
    text = CONFIGS[config]
    if text is not None:
        cfg = workdir / "retinad.toml"
        cfg.write_text(text.replace("{kubeconfig}", str(kubeconfig)).replace("{node}", KUBE_NODE))
        args += ["--config.file", str(cfg)]
    notify = NotifySocket(workdir / "notify.sock")
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path)}
    if tm_dir:
        env["RETINAD_TM_DIR"] = str(tm_dir)
    if source:
        env["PYTHONPATH"] = source
        env["RETINAD_BPF_DIR"] = str(Path(source) / "bpf")
    log = (workdir / "retinad.log").open("wb")
    t0 = time.monotonic()
    proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT,
                            cwd=source or None)  # fmt: skip
    try:
        notify.wait_for("READY=1", timeout=600)
    except BaseException:  # never leave a daemon behind (it holds tc attachments)
        proc.kill()
        proc.wait(timeout=30)
        raise
    finally:
        notify.close()
    ready = time.monotonic() - t0
    return proc, ready, port


class Churn:
    """Soak containers: one started per step, the oldest removed past ``keep``."""

    def __init__(self, keep: int = 6) -> None:
        from tests.docker_engine import DockerEngine

        self.engine = DockerEngine.shared()
        # Not the suite's retinad-test label: other sessions' test teardowns remove those.
        self.label = "retinad-lean-soak"
        self.keep = keep
        self.ids: list[tuple[str, str]] = []
        self.n = 0

    def step(self) -> None:
        api = self.engine.api
        self.n += 1
        c = api.create_container(self.engine.image(), command=["sleep", "3600"],
                                 name=f"lean-soak-{os.getpid()}-{self.n}",
                                 labels={self.label: "1"},
                                 host_config=api.create_host_config(),
                                 stop_signal="SIGKILL")  # fmt: skip
        api.start(c["Id"])
        ip = api.inspect_container(c["Id"])["NetworkSettings"]["IPAddress"]
        self.ids.append((c["Id"], ip))
        while len(self.ids) > self.keep:
            self._remove(self.ids.pop(0)[0])

    def addresses(self) -> list[str]:
        return [ip for _, ip in self.ids if ip]

    def close(self) -> None:
        for cid, _ in self.ids:
            self._remove(cid)
        self.ids.clear()

    def _remove(self, cid: str) -> None:
        import docker.errors

        with contextlib.suppress(docker.errors.NotFound):  # already gone
            self.engine.api.remove_container(cid, force=True)


class PodChurn:
    """Kubernetes soak: a pod (bound to KUBE_NODE, with a 10.244/16 IP) created per step
    in one namespace, the oldest deleted past ``keep``. The addresses are not routed, so
    this churns the resolver's watch and index, not kernel keys."""

    def __init__(self, cluster: Any, keep: int = 6) -> None:
        self.cluster = cluster
        self.keep = keep
        self.namespace = f"lean-soak-{os.getpid()}"
        cluster.create_namespace(self.namespace)
        self.names: list[str] = []
        self.n = 0

    def step(self) -> None:
        self.n += 1
        name = f"pod-{self.n}"
        ip = f"10.244.{self.n // 250 % 250}.{self.n % 250 + 1}"
        self.cluster.create_pod(name, self.namespace, KUBE_NODE, ip,
                                labels={"app": f"soak-{self.n % 3}"})  # fmt: skip
        self.names.append(name)
        while len(self.names) > self.keep:
            self.cluster.delete_pod(self.names.pop(0), self.namespace, wait=False)

    def addresses(self) -> list[str]:
        return []

    def close(self) -> None:
        pass  # the whole cluster goes with its workdir


def soak(
    proc: subprocess.Popen[bytes],
    port: int,
    seconds: float,
    churn: Churn | PodChurn | None,
    snapshots: bool = False,
) -> list[tuple[float, float]]:
    samples = [(0.0, rss_mib(proc.pid))]
    if snapshots:
        proc.send_signal(signal.SIGUSR2)  # start tracing
    t0 = last_churn = last_sample = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        while (now := time.monotonic()) - t0 < seconds:
            if churn is not None and now - last_churn >= 2:
                churn.step()
                last_churn = now
            for ip in churn.addresses() if churn else []:
                for dport in range(9000, 9050):  # 50 flows per container: remote/endpoint keys
                    s.sendto(b"x" * 64, (ip, dport))
            for _ in range(200):
                s.sendto(b"x", ("127.0.0.1", 9))  # closed port: a kfree_skb drop each
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=120) as r:
                r.read()
            if now - last_sample >= 10:
                samples.append((now - t0, rss_mib(proc.pid)))
                print(f"  t={now - t0:6.0f}s rss={samples[-1][1]:.1f} MiB", flush=True)
                last_sample = now
                if snapshots and round(now - t0) % 60 < 10:
                    proc.send_signal(signal.SIGUSR2)  # a tracemalloc snapshot a minute
            time.sleep(max(0.0, 1.0 - (time.monotonic() - now)))
    samples.append((time.monotonic() - t0, rss_mib(proc.pid)))
    return samples


def report_growth(tm_dir: Path, top: int = 25) -> None:
    """Print what grew between the second and the last snapshot (the first is taken while
    start-up state settles), by allocation site and by live-object type."""
    import json
    import tracemalloc

    snaps = sorted(tm_dir.glob("snap-*.pickle"), key=lambda p: int(p.stem.split("-")[1]))
    if len(snaps) < 3:
        print(f"tracemalloc: {len(snaps)} snapshots, need 3")
        return
    first, last = snaps[1], snaps[-1]
    old, new = tracemalloc.Snapshot.load(str(first)), tracemalloc.Snapshot.load(str(last))
    total = sum(s.size_diff for s in new.compare_to(old, "filename"))
    print(f"tracemalloc {first.stem} -> {last.stem}: traced Python heap {total / 1024:+.0f} KiB")
    for stat in new.compare_to(old, "traceback")[:top]:
        print(f"  {stat.size_diff / 1024:+8.1f} KiB {stat.count_diff:+6d} blocks")
        for line in stat.traceback.format(limit=6)[-12:]:
            print("     ", line)
    t_old = json.loads(
        (tm_dir / first.name.replace("snap", "types").replace(".pickle", ".json")).read_text()
    )
    t_new = json.loads(
        (tm_dir / last.name.replace("snap", "types").replace(".pickle", ".json")).read_text()
    )
    grown = sorted(((t_new.get(k, 0) - t_old.get(k, 0), k) for k in t_new), reverse=True)
    print("  live objects grown:", ", ".join(f"{k} {d:+d}" for d, k in grown[:20] if d > 0))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", choices=sorted(CONFIGS), default="default")
    ap.add_argument("--soak", type=float, default=0)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--source")
    ap.add_argument(
        "--tracemalloc",
        metavar="DIR",
        type=Path,
        help="run the daemon under tracemalloc, snapshot every minute of the soak into DIR "
        "and print what grew (slows the daemon; not for RSS figures)",
    )
    ap.add_argument(
        "--trim",
        action="store_true",
        help="after the soak, have the daemon call malloc_trim(0) and print VmRSS before and "
        "after: how much of the growth is freed memory glibc keeps, not live objects",
    )
    args = ap.parse_args()
    readies, starts, cpus = [], [], []
    with contextlib.ExitStack() as stack:
        cluster = None
        if "kubernetes" in args.config:
            from tests.kube_cluster import KubeCluster

            kube_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="retinad-kube-"))
            cluster = stack.enter_context(KubeCluster(Path(kube_dir), ready_timeout=120))
        run_all(args, cluster, readies, starts, cpus)
    print(f"summary: READY median {statistics.median(readies):.2f} s over {len(readies)} runs "
          f"({', '.join(f'{r:.2f}' for r in readies)}); start VmRSS median "
          f"{statistics.median(starts):.1f} MiB; CPU seconds (daemon + reaped children) "
          f"median {statistics.median(cpus):.2f}")  # fmt: skip
    if args.tracemalloc:
        report_growth(args.tracemalloc)
    return 0


def run_all(
    args: argparse.Namespace,
    cluster: Any,
    readies: list[float],
    starts: list[float],
    cpus: list[float],
) -> None:
    kubeconfig = cluster.kubeconfig_path if cluster is not None else None
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="retinad-rss-") as tmp:
            wrapper_dir = args.tracemalloc or (Path(tmp) if args.trim else None)
            proc, ready, port = start(args.config, Path(tmp), args.source, wrapper_dir, kubeconfig)
            try:
                time.sleep(2)  # let start-up threads settle before the first sample
                rss, hwm = rss_mib(proc.pid), rss_mib(proc.pid, "VmHWM")
                anon, file_ = rss_mib(proc.pid, "RssAnon"), rss_mib(proc.pid, "RssFile")
                cpu = cpu_seconds(proc.pid)
                readies.append(ready)
                starts.append(rss)
                cpus.append(cpu)
                print(f"run {run}: READY after {ready:.2f} s, VmRSS {rss:.1f} MiB "
                      f"(anon {anon:.1f}, file {file_:.1f}), VmHWM {hwm:.1f} MiB, "
                      f"CPU to READY+2s {cpu:.2f} s", flush=True)  # fmt: skip
                base = statistics.median(python_start_seconds() for _ in range(3))
                print(f"  bare 'python -c pass' {base:.3f} s: READY = {ready / base:.1f}x that")
                for at, text in breakdown(Path(tmp) / "retinad.log"):
                    print(f"  +{at:6.2f} s {text}")
                if args.soak and run == args.runs - 1:
                    churn: Churn | PodChurn | None = None
                    if "docker" in args.config:
                        churn = Churn()
                    elif cluster is not None:
                        churn = PodChurn(cluster)
                    try:
                        samples = soak(proc, port, args.soak, churn, bool(args.tracemalloc))
                    finally:
                        if churn is not None:
                            churn.close()
                    warm = [r for t, r in samples if t >= 60] or [samples[-1][1]]
                    print(f"soak {args.soak:.0f} s: start {samples[0][1]:.1f} MiB, "
                          f"after 60 s {warm[0]:.1f}, end {samples[-1][1]:.1f}, max "
                          f"{max(r for _, r in samples):.1f}, growth after 60 s "
                          f"{(samples[-1][1] / warm[0] - 1) * 100:+.1f}%")  # fmt: skip
                    if args.trim:
                        proc.send_signal(signal.SIGUSR1)
                        trimmed = Path(wrapper_dir) / "trim.txt"
                        deadline = time.monotonic() + 30
                        while not trimmed.exists() and time.monotonic() < deadline:
                            time.sleep(0.2)
                        print(trimmed.read_text().strip() if trimmed.exists() else "no trim")
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
