"""Measure retinad's resident memory and start-to-READY time, optionally over a soak.

Usage (as root, from the repository root, with the dev venv):

    .venv/bin/python scripts/rss-soak.py --config default --soak 0 --runs 3
    .venv/bin/python scripts/rss-soak.py --config advanced-docker --soak 300

``--config default`` is the embedded default config (packetparser + dropreason, basic);
``advanced-docker`` is advanced mode with the docker resolver (order docker, host).
``--soak N`` runs N seconds of traffic and endpoint churn: UDP to every soak container's
address on the docker bridge and to a closed loopback port (kernel drops), a container
started every 2 s and the oldest removed past 6 (each a new veth and endpoint), and a
scrape of /metrics every second. Containers carry the label retinad-lean-soak=1 and a
``lean-soak-`` name; all are removed at the end. ``--source DIR`` runs another checkout's
retinad (PYTHONPATH), e.g. an ``git archive`` of main for the before figures.

Prints one line per sample (seconds, VmRSS MiB) and a summary; the figures in
docs/PERFORMANCE.md come from this script.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.daemon_proc import NotifySocket

CONFIGS = {
    "default": None,
    "advanced-docker": '[metrics]\nmode = "advanced"\n[resolvers]\norder = ["docker", "host"]\n',
    # The same with a 30 s grace period: vanished endpoints' series and keys go after 30 s
    # instead of 300 s, so a soak of a few minutes reaches the steady state with churn.
    "advanced-docker-grace30": '[metrics]\nmode = "advanced"\n[resolvers]\n'
    'order = ["docker", "host"]\ngrace_period_seconds = 30\n',
}


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


def start(
    config: str, workdir: Path, source: str | None
) -> tuple[subprocess.Popen[bytes], float, int]:
    port = free_port()
    args = [sys.executable, "-m", "retinad", "--web.listen-address", f"127.0.0.1:{port}"]
    text = CONFIGS[config]
    if text is not None:
        cfg = workdir / "retinad.toml"
        cfg.write_text(text)
        args += ["--config.file", str(cfg)]
    notify = NotifySocket(workdir / "notify.sock")
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path)}
    if source:
        env["PYTHONPATH"] = source
        env["RETINAD_BPF_DIR"] = str(Path(source) / "bpf")
    log = (workdir / "retinad.log").open("wb")
    t0 = time.monotonic()
    proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT,
                            cwd=source or None)  # fmt: skip
    notify.wait_for("READY=1", timeout=180)
    ready = time.monotonic() - t0
    notify.close()
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


def soak(
    proc: subprocess.Popen[bytes], port: int, seconds: float, churn: Churn | None
) -> list[tuple[float, float]]:
    samples = [(0.0, rss_mib(proc.pid))]
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
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                r.read()
            if now - last_sample >= 10:
                samples.append((now - t0, rss_mib(proc.pid)))
                print(f"  t={now - t0:6.0f}s rss={samples[-1][1]:.1f} MiB", flush=True)
                last_sample = now
            time.sleep(max(0.0, 1.0 - (time.monotonic() - now)))
    samples.append((time.monotonic() - t0, rss_mib(proc.pid)))
    return samples


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", choices=sorted(CONFIGS), default="default")
    ap.add_argument("--soak", type=float, default=0)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--source")
    args = ap.parse_args()
    readies, starts, cpus = [], [], []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="retinad-rss-") as tmp:
            proc, ready, port = start(args.config, Path(tmp), args.source)
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
                if args.soak and run == args.runs - 1:
                    churn = Churn() if "docker" in args.config else None
                    try:
                        samples = soak(proc, port, args.soak, churn)
                    finally:
                        if churn is not None:
                            churn.close()
                    warm = [r for t, r in samples if t >= 60] or [samples[-1][1]]
                    print(f"soak {args.soak:.0f} s: start {samples[0][1]:.1f} MiB, "
                          f"after 60 s {warm[0]:.1f}, end {samples[-1][1]:.1f}, max "
                          f"{max(r for _, r in samples):.1f}, growth after 60 s "
                          f"{(samples[-1][1] / warm[0] - 1) * 100:+.1f}%")  # fmt: skip
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
    print(f"summary: READY median {statistics.median(readies):.2f} s over {len(readies)} runs "
          f"({', '.join(f'{r:.2f}' for r in readies)}); start VmRSS median "
          f"{statistics.median(starts):.1f} MiB; CPU seconds (daemon + reaped children) "
          f"median {statistics.median(cpus):.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
