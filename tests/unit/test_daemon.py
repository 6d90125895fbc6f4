"""The daemon process: READY/STATUS/WATCHDOG over a real notify socket, SIGHUP, SIGTERM.

Plugins are disabled here (they have their own kernel tests and the e2e test runs them
all), so these tests exercise the lifecycle alone and take seconds.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_proc import DaemonProcess, NotifySocket, http_get, try_get, wait_for

NO_PLUGINS = ["--no-collector.packetparser", "--no-collector.dropreason"]


def write_config(path: Path, port: int, telemetry_path: str = "/metrics") -> None:
    path.write_text(
        f'[web]\nlisten_address = ["127.0.0.1:{port}"]\ntelemetry_path = "{telemetry_path}"\n'
    )


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def start(
    tmp_path: Path, notify: NotifySocket, port: int, watchdog_usec: int = 400_000
) -> DaemonProcess:
    cfg = tmp_path / "retinad.toml"
    write_config(cfg, port)
    return DaemonProcess(
        ["--config.file", str(cfg), *NO_PLUGINS],
        workdir=tmp_path,
        env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": str(watchdog_usec)},
    )


def test_ready_status_watchdog_then_stopping(
    tmp_path: Path, notify: NotifySocket, free_port: int
) -> None:
    d = start(tmp_path, notify, free_port)
    try:
        ready = notify.wait_for("READY=1")
        assert ready == f"READY=1\nSTATUS=no plugins enabled; serving on 127.0.0.1:{free_port}"
        # STATUS= steps came before READY=1, in order.
        before = notify.messages[: notify.messages.index(ready)]
        assert before == ["STATUS=starting web server", "STATUS=starting resolvers"]
        for _ in range(3):
            assert notify.wait_for("WATCHDOG=1", timeout=2.0) == "WATCHDOG=1"
        status, body = http_get(f"http://127.0.0.1:{free_port}/metrics")
        assert status == 200 and "retinad_build_info{" in body
    finally:
        rc = d.stop()
    assert rc == 0
    assert notify.wait_for("STOPPING=1", timeout=5) == "STOPPING=1\nSTATUS=stopping"
    assert try_get(f"http://127.0.0.1:{free_port}/metrics") is None, "port still served"


def test_sighup_applies_a_valid_config_and_keeps_the_old_on_error(
    tmp_path: Path, notify: NotifySocket, free_port: int
) -> None:
    d = start(tmp_path, notify, free_port)
    base = f"http://127.0.0.1:{free_port}"
    try:
        notify.wait_for("READY=1")
        cfg = tmp_path / "retinad.toml"
        write_config(cfg, free_port, telemetry_path="/m2")
        d.signal(signal.SIGHUP)
        assert notify.wait_for("RELOADING=1").startswith("RELOADING=1")
        notify.wait_for("READY=1")
        wait_for(lambda: (try_get(base + "/m2") or (0, ""))[0] == 200, what="/m2 served")
        assert http_get(base + "/metrics")[0] == 404

        cfg.write_text('[web]\nlisten_address = ["127.0.0.1:1"]\ntelemetry_path = 7\n')
        d.signal(signal.SIGHUP)
        wait_for(lambda: "reload refused" in d.log, what="the refusal in the log")
        assert f"{cfg}: [web].telemetry_path: expected a string, got 7" in d.log
        assert http_get(base + "/m2")[0] == 200  # old config still in force
    finally:
        assert d.stop() == 0


def test_sigint_also_stops_cleanly(tmp_path: Path, notify: NotifySocket, free_port: int) -> None:
    d = start(tmp_path, notify, free_port)
    notify.wait_for("READY=1")
    d.signal(signal.SIGINT)
    assert d.proc.wait(20) == 0
    assert d.stop() == 0


def test_port_in_use_fails_start_with_exit_1(
    tmp_path: Path, notify: NotifySocket, free_port: int
) -> None:
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", free_port))
    holder.listen()
    try:
        d = start(tmp_path, notify, free_port)
        assert d.proc.wait(20) == 1
        assert d.stop() == 1
        assert f"127.0.0.1:{free_port}" in d.log
        assert "READY=1" not in "".join(notify.messages)
    finally:
        holder.close()


# --- reload: what runs is what the daemon believes runs ---------------------------------------


def https_get(url: str, ca: Path, auth: tuple[str, str] | None = None) -> tuple[int, str]:
    import base64
    import ssl
    import urllib.request

    req = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(":".join(auth).encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    ctx = ssl.create_default_context(cafile=str(ca))
    try:
        with urllib.request.urlopen(req, timeout=5, context=ctx) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def hup_and_wait(d: DaemonProcess, notify: NotifySocket) -> str:
    """SIGHUP, then the READY=1 that ends that reload; returns its STATUS."""
    d.signal(signal.SIGHUP)
    notify.wait_for("RELOADING=1")
    return notify.wait_for("READY=1")


def test_web_config_refused_then_created_is_applied_by_the_next_reload(
    tmp_path: Path, notify: NotifySocket, free_port: int
) -> None:
    """The operator's sequence from issue 10: add a web config file that does not exist yet
    (refused), create it with TLS + basic auth, SIGHUP again: it must apply, not say
    "unchanged" while /metrics keeps answering plain HTTP without a password."""
    import bcrypt

    from tests.unit.test_webconfig import PKI

    d = start(tmp_path, notify, free_port)
    cfg = tmp_path / "retinad.toml"
    plain = f"http://127.0.0.1:{free_port}/metrics"
    secure = f"https://localhost:{free_port}/metrics"
    try:
        notify.wait_for("READY=1")
        cfg.write_text(
            f'[web]\nlisten_address = ["127.0.0.1:{free_port}"]\nconfig_file = "web.yml"\n'
        )
        hup_and_wait(d, notify)
        web_yml = tmp_path / "web.yml"
        assert (
            f"reload: new [web] settings refused, keeping the old ones: [web].config_file: "
            f"{web_yml}: no such file" in d.log
        )
        assert http_get(plain)[0] == 200  # still the old, plain server

        pki = PKI(tmp_path)
        ca = pki.ca("ca")
        pki.issue(ca, "server")
        pw_hash = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
        web_yml.write_text(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
            f"basic_auth_users:\n  alice: {pw_hash}\n"
        )
        hup_and_wait(d, notify)
        assert d.log.count("reload: configuration unchanged") == 0
        status, body = http_get(plain)
        assert (status, body) == (400, "Client sent an HTTP request to an HTTPS server.\n")
        assert https_get(secure, ca.cert)[0] == 401
        for path in ("/metrics", "/-/healthy", "/-/ready"):
            assert https_get(f"https://localhost:{free_port}{path}", ca.cert)[0] == 401, path
        status, body = https_get(secure, ca.cert, auth=("alice", "pw"))
        assert status == 200 and "retinad_build_info{" in body
        ready = https_get(f"https://localhost:{free_port}/-/ready", ca.cert, ("alice", "pw"))
        assert ready == (200, "retinad is Ready.\n")

        hup_and_wait(d, notify)  # now it really is unchanged
        assert d.log.count("reload: configuration unchanged") == 1
    finally:
        assert d.stop() == 0
    assert "Traceback" not in d.log


def test_refused_listen_address_is_bound_by_a_later_reload(
    tmp_path: Path, notify: NotifySocket, free_port: int
) -> None:
    import socket

    d = start(tmp_path, notify, free_port)
    cfg = tmp_path / "retinad.toml"
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        third = probe.getsockname()[1]
    try:
        notify.wait_for("READY=1")
        cfg.write_text(f'[web]\nlisten_address = ["127.0.0.1:{free_port}", "127.0.0.1:{taken}"]\n')
        status = hup_and_wait(d, notify)
        assert status.endswith(f"serving on 127.0.0.1:{free_port}"), status
        assert f'cannot listen on \\"127.0.0.1:{taken}\\": address already in use' in d.log
        # A second refused reload (another address taken) must not bind the first one's.
        cfg.write_text(f'[web]\nlisten_address = ["127.0.0.1:{third}", "127.0.0.1:{taken}"]\n')
        status = hup_and_wait(d, notify)
        assert status.endswith(f"serving on 127.0.0.1:{free_port}"), status
        assert try_get(f"http://127.0.0.1:{third}/metrics") is None
        assert http_get(f"http://127.0.0.1:{free_port}/metrics")[0] == 200

        holder.close()  # the address is free now: the next SIGHUP binds it
        status = hup_and_wait(d, notify)
        assert status.endswith(f"serving on 127.0.0.1:{third}, 127.0.0.1:{taken}"), status
        assert try_get(f"http://127.0.0.1:{free_port}/metrics") is None
        for port in (third, taken):
            assert http_get(f"http://127.0.0.1:{port}/metrics")[0] == 200
    finally:
        holder.close()
        assert d.stop() == 0


def test_reloads_never_leave_retinad_without_a_listener(
    tmp_path: Path, notify: NotifySocket, free_port: int
) -> None:
    """Connections attempted throughout 20 [web] reloads are all served; and a reload
    whose old web config turned invalid meanwhile neither stops the daemon nor its port."""
    import threading

    import bcrypt

    d = start(tmp_path, notify, free_port)
    cfg = tmp_path / "retinad.toml"
    url = f"http://127.0.0.1:{free_port}/"
    failures: list[str] = []
    done = threading.Event()
    served = 0

    def hammer() -> None:
        nonlocal served
        while not done.is_set():
            got = try_get(url)
            if got is None or got[0] != 200:
                failures.append(repr(got))
            else:
                served += 1

    try:
        notify.wait_for("READY=1")
        t = threading.Thread(target=hammer)
        t.start()
        for i in range(20):
            cfg.write_text(
                f'[web]\nlisten_address = ["127.0.0.1:{free_port}"]\nmax_requests = {i + 1}\n'
            )
            hup_and_wait(d, notify)
        done.set()
        t.join()
        assert failures == [] and served > 20

        web_yml = tmp_path / "web.yml"
        pw_hash = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
        web_yml.write_text(f"basic_auth_users:\n  alice: {pw_hash}\n")
        cfg.write_text(
            f'[web]\nlisten_address = ["127.0.0.1:{free_port}"]\nconfig_file = "web.yml"\n'
        )
        hup_and_wait(d, notify)
        assert http_get(f"http://127.0.0.1:{free_port}/metrics")[0] == 401
        web_yml.write_text("basic_auth_users: [broken\n")  # the running one keeps the last good
        cfg.write_text(
            f'[web]\nlisten_address = ["127.0.0.1:{free_port}"]\nconfig_file = "web.yml"\n'
            'telemetry_path = "/m2"\n'
        )
        hup_and_wait(d, notify)
        assert d.proc.poll() is None, "a refused [web] reload ended the daemon"
        assert "reload: new [web] settings refused, keeping the old ones" in d.log
        assert http_get(f"http://127.0.0.1:{free_port}/metrics")[0] == 401
    finally:
        done.set()
        assert d.stop() == 0
    assert "Traceback" not in d.log


def test_stalled_main_loop_withholds_the_watchdog_while_http_still_serves(
    tmp_path: Path, notify: NotifySocket, free_port: int
) -> None:
    """The main loop blocks (a reload reading a FIFO nobody writes yet) while the web
    threads keep running: WATCHDOG=1 must stop, /-/healthy still answers, and the pings
    resume when the loop does."""
    import os

    d = start(tmp_path, notify, free_port, watchdog_usec=400_000)  # ping every 0.2 s
    cfg = tmp_path / "retinad.toml"
    try:
        notify.wait_for("WATCHDOG=1")
        cfg.unlink()
        os.mkfifo(cfg)
        d.signal(signal.SIGHUP)
        notify.wait_for("RELOADING=1")
        while notify.recv(0.25) is not None:  # drain what was in flight
            pass
        assert notify.recv(1.0) is None, "WATCHDOG=1 sent by a stalled main loop"
        assert http_get(f"http://127.0.0.1:{free_port}/-/healthy") == (200, "retinad is Healthy.\n")
        with open(cfg, "w") as fifo:  # unblocks the reload with the same config
            fifo.write(f'[web]\nlisten_address = ["127.0.0.1:{free_port}"]\n')
        assert notify.wait_for("WATCHDOG=1", timeout=5.0) == "WATCHDOG=1"
    finally:
        assert d.stop() == 0


def test_healthy_and_ready_endpoints(tmp_path: Path, notify: NotifySocket, free_port: int) -> None:
    d = start(tmp_path, notify, free_port)
    base = f"http://127.0.0.1:{free_port}"
    try:
        notify.wait_for("READY=1")
        assert http_get(base + "/-/healthy") == (200, "retinad is Healthy.\n")
        assert http_get(base + "/-/ready") == (200, "retinad is Ready.\n")
    finally:
        assert d.stop() == 0


def _route_netlink_fds_with_groups() -> list[int]:
    """This process's NETLINK_ROUTE sockets subscribed to multicast groups (the watchers'),
    found through /proc, not through retinad's objects."""
    import os

    inodes = set()
    with open("/proc/net/netlink") as f:
        next(f)
        for line in f:
            cols = line.split()
            protocol, groups, inode = int(cols[1]), int(cols[3], 16), cols[9]
            if protocol == 0 and groups:
                inodes.add(inode)
    fds = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            fds.append(int(name))
    return fds


def test_dead_netlink_thread_withholds_the_watchdog(tmp_path: Path, free_port: int) -> None:
    """The host resolver's netlink watcher dies (its socket replaced under it by /dev/null,
    so its recv fails with a real ENOTSOCK): the main loop goes on, but WATCHDOG=1 stops so
    systemd restarts retinad."""
    import logging
    import os
    import threading

    from retinad.config.load import load_config
    from retinad.daemon.lifecycle import Daemon
    from retinad.daemon.systemd import Notifier
    from tests.netns import sh, unique

    assert _route_netlink_fds_with_groups() == [], "a watcher socket before the daemon runs"
    cfg = tmp_path / "retinad.toml"
    write_config(cfg, free_port)
    cfg.write_text(
        cfg.read_text() + "[packetparser]\nenabled = false\n[dropreason]\nenabled = false\n"
    )
    settings = load_config(cfg)
    sock = NotifySocket(tmp_path / "notify.sock")
    notifier = Notifier({"NOTIFY_SOCKET": str(sock.path), "WATCHDOG_USEC": "400000"})
    daemon = Daemon(
        settings, loader=lambda: load_config(cfg), notifier=notifier, logger=logging.getLogger("t")
    )
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(daemon.run()))
    runner.start()
    try:
        sock.wait_for("READY=1")
        sock.wait_for("WATCHDOG=1")
        fds = wait_for(_route_netlink_fds_with_groups, what="the host resolver's netlink socket")
        assert len(fds) == 1
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, fds[0])
        os.close(devnull)
        # The thread sleeps in select() on the old socket until a netlink event wakes it:
        # make one (a veth pair of our own, gone again at once).
        name = unique("rtw")
        sh("ip", "link", "add", name, "type", "veth", "peer", "name", unique("rtw"))
        sh("ip", "link", "del", name)
        wait_for(lambda: not daemon.healthy(), what="the daemon to see the dead thread")
        # A ping already decided before the thread died may still come (a loaded machine
        # can delay the loop); after half a second of silence none may arrive for 1.5 s.
        while sock.recv(0.5) is not None:
            pass
        assert sock.recv(1.5) is None, "WATCHDOG=1 sent with a dead netlink thread"
        assert runner.is_alive()
        assert http_get(f"http://127.0.0.1:{free_port}/-/healthy")[0] == 200
    finally:
        daemon.request_stop()
        runner.join(20)
        sock.close()
    assert result == [0]
