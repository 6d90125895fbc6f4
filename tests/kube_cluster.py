"""A real Kubernetes API server (kube-apiserver v1.20.2 + etcd) for tests.

Why a real one: the resolver talks to the API with the official ``kubernetes``
client (list, field selectors, watch from a resourceVersion, 410 Gone after a
compaction, apiserver restarts). A fake would only test our idea of the API.

No kubelet, scheduler or controller-manager run, so:

* pods are created already bound (``spec.nodeName``) and their IPs/phase are
  written through the ``status`` subresource by :meth:`KubeCluster.create_pod`;
* deleting a namespace leaves it ``Terminating`` forever (no namespace
  controller), so tests should use fresh namespace names instead;
* the ``ServiceAccount`` admission plugin is disabled (nobody creates the
  ``default`` service account that it would demand of every pod);
* no token controller: a ServiceAccount's token comes from the TokenRequest API
  (:meth:`KubeCluster.service_account_token`), as kubelet gets projected tokens.

``rbac=True`` runs the apiserver with ``--authorization-mode=RBAC``: the test's own
token stays in ``system:masters`` (allowed everything), while a ServiceAccount token
gets exactly what its (Cluster)RoleBindings grant. Without it, AlwaysAllow.

The apiserver runs with ``--watch-cache=false`` so that watches go straight to
etcd: after :meth:`KubeCluster.compact_etcd` a watch from an older
resourceVersion gets 410 Gone, as it does on a real cluster once the history is
compacted.

Build the binary first with ``scripts/build-kube-apiserver.sh`` (or
:func:`ensure_built`).
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import datetime
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.daemon_proc import wait_for

KUBE_VERSION = "1.20.2"
REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-kube-apiserver.sh"
ETCD_BINARY = Path("/usr/bin/etcd")

#: Where apiserver puts the ``kubernetes`` Service's Endpoints. It must not be
#: loopback (Endpoints validation rejects 127.0.0.0/8, so the bootstrap
#: controller could never write them); TEST-NET-1 is never routed, and nothing
#: connects to it: clients use the kubeconfig's 127.0.0.1 URL.
DEFAULT_ADVERTISE_ADDRESS = "192.0.2.10"
#: kubeadm's default; the ``kubernetes`` Service gets its first address.
DEFAULT_SERVICE_CIDR = "10.96.0.0/12"

_PR_SET_PDEATHSIG = 1


def cache_dir() -> Path:
    """The build cache root, shared with scripts/build-kube-apiserver.sh."""
    return Path(os.environ.get("RETINAD_CACHE", "/var/cache/retinad-test"))


def apiserver_binary_path() -> Path:
    """Where scripts/build-kube-apiserver.sh leaves kube-apiserver."""
    return cache_dir() / "kube" / f"v{KUBE_VERSION}" / "kube-apiserver"


def ensure_built(timeout: float = 3600.0) -> Path:
    """Run scripts/build-kube-apiserver.sh (instant once built) and return the binary.

    The cold build takes minutes, longer than a test's pytest-timeout: run the
    script before pytest (setup/CI) so that this only confirms the cached binary.
    """
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{BUILD_SCRIPT} failed with exit code {proc.returncode}:\n{proc.stderr[-4000:]}"
        )
    path = Path(proc.stdout.strip().splitlines()[-1])
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"{BUILD_SCRIPT} succeeded but {path} is not an executable")
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL the child if the test process dies without cleaning up."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class _Proc:
    """A child process whose output goes to a log file the test can show on failure."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        with log_path.open("ab") as log:
            log.write(f"--- start: {' '.join(argv)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` (at once if ``timeout <= 0``); always reaps."""
        if self.popen.poll() is None:
            if timeout > 0:
                self.popen.send_signal(signal.SIGTERM)
                try:
                    self.popen.wait(timeout)
                    return
                except subprocess.TimeoutExpired:
                    pass
            self.popen.kill()
        self.popen.wait()


class _Certs:
    """A CA, the apiserver's serving cert and the service-account signing key."""

    def __init__(self, certdir: Path, server_ips: Sequence[str]) -> None:
        certdir.mkdir(parents=True, exist_ok=True)
        self.ca_cert = certdir / "ca.crt"
        self.server_cert = certdir / "apiserver.crt"
        self.server_key = certdir / "apiserver.key"
        self.sa_key = certdir / "sa.key"
        now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
        later = now + datetime.timedelta(days=2)

        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "retinad-test-ca")])
        ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(later)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ca_ski, critical=False)
            .sign(ca_key, hashes.SHA256())
        )

        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = [
            x509.DNSName(n)
            for n in (
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            )
        ]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in server_ips]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(later)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                critical=False,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )

        self.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        self.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.server_key.write_bytes(_private_pem(key))
        self.sa_key.write_bytes(_private_pem(ec.generate_private_key(ec.SECP256R1())))
        for p in (self.server_key, self.sa_key):
            p.chmod(0o600)


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


class KubeCluster:
    """etcd + kube-apiserver on 127.0.0.1 free ports, state under ``workdir``.

    Use as a context manager (or call :meth:`stop` in a ``finally``/fixture
    finalizer) so that both processes go away even when a test fails.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        apiserver_binary: Path | None = None,
        etcd_binary: Path = ETCD_BINARY,
        advertise_address: str = DEFAULT_ADVERTISE_ADDRESS,
        service_cidr: str = DEFAULT_SERVICE_CIDR,
        ready_timeout: float = 30.0,
        rbac: bool = False,
        service_account_admission: bool = False,
    ) -> None:
        self.rbac = rbac
        #: True with a controller-manager (tests/kube_node.py) that makes the service
        #: accounts and their tokens the ServiceAccount admission plugin mounts into pods.
        self.service_account_admission = service_account_admission
        self.apiserver_binary = apiserver_binary or apiserver_binary_path()
        if not os.access(self.apiserver_binary, os.X_OK):
            raise FileNotFoundError(
                f"no kube-apiserver at {self.apiserver_binary}: "
                f"run {BUILD_SCRIPT} (as root) to build it"
            )
        if not os.access(etcd_binary, os.X_OK):
            raise FileNotFoundError(
                f"no etcd at {etcd_binary}: run {BUILD_SCRIPT} (it installs etcd-server)"
            )
        self.etcd_binary = etcd_binary
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.advertise_address = advertise_address
        self.service_cidr = service_cidr
        self.ready_timeout = ready_timeout

        self.token = secrets.token_hex(16)
        self.etcd_port = free_port()
        self.etcd_peer_port = free_port()
        self.apiserver_port = free_port()
        self.etcd_url = f"http://127.0.0.1:{self.etcd_port}"
        self.server_url = f"https://127.0.0.1:{self.apiserver_port}"
        #: The ``kubernetes`` Service's ClusterIP (first address of the service CIDR).
        self.kubernetes_service_ip = str(
            next(ipaddress.ip_network(service_cidr, strict=False).hosts())
        )

        self.certs = _Certs(
            self.workdir / "pki",
            ["127.0.0.1", advertise_address, self.kubernetes_service_ip],
        )
        self.ca_cert_path = self.certs.ca_cert
        self.token_file = self.workdir / "tokens.csv"
        self.token_file.write_text(f'{self.token},retinad-test,retinad-test,"system:masters"\n')
        self.token_file.chmod(0o600)
        self.kubeconfig_path = self.workdir / "kubeconfig"
        self._write_kubeconfig()

        self._etcd: _Proc | None = None
        self._apiserver: _Proc | None = None
        #: Seconds the last apiserver start took until /readyz answered 200.
        self.last_apiserver_start_seconds: float | None = None
        self._ssl = ssl.create_default_context(cafile=str(self.ca_cert_path))

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start etcd, then kube-apiserver, and wait until the apiserver is ready."""
        try:
            self._start_etcd()
            self._start_apiserver()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop both processes (apiserver first), wait for them, and drop etcd's data.

        etcd preallocates ~60 MB of WAL, and pytest keeps the last three runs'
        tmp dirs, so the data dir goes (logs stay) unless RETINAD_KEEP_KUBE_DATA=1.
        """
        self.stop_apiserver()
        if self._etcd is not None:
            self._etcd.stop()
            self._etcd = None
            if os.environ.get("RETINAD_KEEP_KUBE_DATA") != "1":
                shutil.rmtree(self.workdir / "etcd-data", ignore_errors=True)

    def stop_apiserver(self, grace: float = 2.0) -> None:
        """SIGTERM kube-apiserver, SIGKILL it after ``grace`` seconds, and reap it.

        Why the short grace: on SIGTERM v1.20 stops listening at once but then
        waits for open watches to end by themselves (up to their timeout), so a
        graceful stop with a client watching would take as long as the watch.
        Clients' open watches end with urllib3 ``ProtocolError`` ("Response
        ended prematurely"). ``grace=0`` is a crash (SIGKILL straight away).
        """
        if self._apiserver is not None:
            self._apiserver.stop(timeout=grace)
            self._apiserver = None

    def start_apiserver(self) -> None:
        """Start kube-apiserver (again) on the same port over the running etcd; wait for /readyz."""
        if self._apiserver is not None:
            raise RuntimeError("kube-apiserver is already running")
        self._start_apiserver()

    def restart_apiserver(self, grace: float = 2.0) -> None:
        """Stop kube-apiserver and start it again on the same port over the same etcd.

        Clients see their connections drop and watches end, as on an apiserver
        rollout; objects and resourceVersions survive (they live in etcd). While
        it is down the ``default/kubernetes`` Endpoints may be emptied (the
        apiserver removes its own lease on SIGTERM) and are rewritten on start.
        """
        self.stop_apiserver(grace)
        self._start_apiserver()

    def _start_etcd(self) -> None:
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        argv = [
            str(self.etcd_binary),
            "--name=retinad-test",
            f"--data-dir={self.workdir / 'etcd-data'}",
            f"--listen-client-urls={self.etcd_url}",
            f"--advertise-client-urls={self.etcd_url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=retinad-test={peer}",
            "--initial-cluster-state=new",
            "--logger=zap",
            "--log-outputs=stderr",
            "--log-level=warn",
        ]
        self._etcd = _Proc("etcd", argv, self.workdir / "etcd.log")
        wait_for(
            lambda: self._check_alive(self._etcd) and self._etcd_healthy(),
            timeout=self.ready_timeout,
            what=f"etcd health on {self.etcd_url}",
        )

    def _start_apiserver(self) -> None:
        argv = [
            str(self.apiserver_binary),
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.apiserver_port}",
            "--insecure-port=0",
            f"--advertise-address={self.advertise_address}",
            f"--tls-cert-file={self.certs.server_cert}",
            f"--tls-private-key-file={self.certs.server_key}",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            f"--token-auth-file={self.token_file}",
            f"--authorization-mode={'RBAC' if self.rbac else 'AlwaysAllow'}",
            f"--service-account-key-file={self.certs.sa_key}",
            f"--service-account-signing-key-file={self.certs.sa_key}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={self.service_cidr}",
            # Watches must reach etcd for compaction to yield 410 Gone.
            "--watch-cache=false",
            # Without a controller-manager nobody creates "default" service accounts
            # and tokens; the plugin would refuse pods.
            *(
                []
                if self.service_account_admission
                else ["--disable-admission-plugins=ServiceAccount"]
            ),
            # Not under test; its post-start hook only slows readiness.
            "--enable-priority-and-fairness=false",
            # Compaction happens when a test asks for it, not on a timer.
            "--etcd-compaction-interval=0",
            "--profiling=false",
            "--v=0",
        ]
        self._apiserver = _Proc("kube-apiserver", argv, self.workdir / "kube-apiserver.log")
        started = time.monotonic()
        wait_for(
            lambda: self._check_alive(self._apiserver) and self._apiserver_ready(),
            timeout=self.ready_timeout,
            what=f"kube-apiserver /readyz on {self.server_url}",
        )
        self.last_apiserver_start_seconds = time.monotonic() - started

    def _check_alive(self, proc: _Proc | None) -> bool:
        if proc is None or not proc.alive():
            name = proc.name if proc else "process"
            tail = proc.log_tail() if proc else ""
            raise RuntimeError(f"{name} exited during start-up; log tail:\n{tail}")
        return True

    # -- raw HTTP (readiness, etcd) ----------------------------------------

    def _etcd_post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST to etcd's v3 JSON gateway (no etcdctl needed)."""
        req = urllib.request.Request(
            self.etcd_url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            result: dict[str, Any] = json.load(resp)
            return result

    def _etcd_healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.etcd_url + "/health", timeout=2) as resp:
                return bool(json.load(resp).get("health") == "true")
        except (OSError, ValueError):
            return False

    def _apiserver_ready(self) -> bool:
        req = urllib.request.Request(
            self.server_url + "/readyz", headers={"Authorization": f"Bearer {self.token}"}
        )
        try:
            with urllib.request.urlopen(req, timeout=2, context=self._ssl) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.HTTPError):
            return False

    def etcd_revision(self) -> int:
        """etcd's current revision (what apiserver reports as resourceVersion)."""
        header = self._etcd_post("/v3/kv/range", {"key": _b64("/"), "limit": 1})["header"]
        return int(header["revision"])

    def compact_etcd(self) -> int:
        """Compact etcd's history so that watches from earlier resourceVersions get 410 Gone.

        Two throw-away writes first move the revision past anything a test has
        seen, so *every* resourceVersion observed before this call is too old
        (a watch from rv starts at rv+1, which must fall below the compaction
        point). Returns the revision compacted at.
        """
        for i in range(2):
            self._etcd_post(
                "/v3/kv/put", {"key": _b64("/retinad-test/compact-bump"), "value": _b64(str(i))}
            )
        revision = self.etcd_revision()
        self._etcd_post("/v3/kv/compaction", {"revision": str(revision), "physical": True})
        return revision

    # -- clients -----------------------------------------------------------

    def _write_kubeconfig(self) -> None:
        self.write_kubeconfig(self.kubeconfig_path, self.token)

    def write_kubeconfig(self, path: Path, token: str, server: str | None = None) -> Path:
        """Write a kubeconfig for ``token`` (CA-verified, ``server`` or this cluster's URL)."""
        ca = base64.b64encode(self.ca_cert_path.read_bytes()).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "retinad-test",
                    "cluster": {
                        "server": server or self.server_url,
                        "certificate-authority-data": ca,
                    },
                }
            ],
            "users": [{"name": "retinad-test", "user": {"token": token}}],
            "contexts": [
                {
                    "name": "retinad-test",
                    "context": {"cluster": "retinad-test", "user": "retinad-test"},
                }
            ],
            "current-context": "retinad-test",
        }
        # JSON is valid YAML, and so a valid kubeconfig.
        path.write_text(json.dumps(config, indent=2) + "\n")
        path.chmod(0o600)
        return path

    def service_account_token(
        self, namespace: str, name: str, *, expiration_seconds: int = 3600
    ) -> str:
        """A token of ServiceAccount ``namespace/name`` from the TokenRequest API.

        The same kind of bound token kubelet projects into a pod at
        /var/run/secrets/kubernetes.io/serviceaccount/token.
        """
        with self.core_v1() as v1:
            body = {"spec": {"audiences": [], "expirationSeconds": expiration_seconds}}
            resp = v1.create_namespaced_service_account_token(name, namespace, body)
        token: str = resp.status.token
        return token

    def api_client(self) -> Any:
        """A new ``kubernetes.client.ApiClient`` for this cluster (CA-verified, token auth).

        Callers should ``close()`` it (or use it as a context manager).
        """
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.server_url
        cfg.ssl_ca_cert = str(self.ca_cert_path)
        cfg.verify_ssl = True
        cfg.api_key = {"authorization": self.token}
        cfg.api_key_prefix = {"authorization": "Bearer"}
        return client.ApiClient(cfg)

    @contextlib.contextmanager
    def core_v1(self) -> Iterator[Any]:
        """A ``CoreV1Api`` whose ApiClient is closed afterwards."""
        from kubernetes import client

        with self.api_client() as api:
            yield client.CoreV1Api(api)

    # -- object helpers ----------------------------------------------------

    def create_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> Any:
        """Create a Namespace and return the V1Namespace."""
        with self.core_v1() as v1:
            body = {"metadata": {"name": name, "labels": dict(labels or {})}}
            return v1.create_namespace(body)

    def create_pod(
        self,
        name: str,
        namespace: str,
        node_name: str,
        ip: str | Sequence[str] | None = None,
        *,
        owner_refs: Sequence[Mapping[str, Any]] = (),
        host_network: bool = False,
        labels: Mapping[str, str] | None = None,
        host_ip: str | None = None,
        phase: str = "Running",
    ) -> Any:
        """Create a Pod already bound to ``node_name`` and, if ``ip``, give it that IP.

        ``ip`` may be one address or a list (dual-stack ``podIPs``; the first is
        ``podIP``). Status is written via the status subresource as a kubelet
        would; with ``ip=None`` the pod stays Pending without an IP, like a pod
        whose sandbox is not up yet. ``owner_refs`` are dicts in API form
        (``apiVersion``, ``kind``, ``name``, ``uid``, optional ``controller``).
        Returns the V1Pod as the API last returned it.
        """
        spec: dict[str, Any] = {
            "nodeName": node_name,
            "hostNetwork": host_network,
            "containers": [{"name": "main", "image": "registry.invalid/pause:test"}],
            "terminationGracePeriodSeconds": 0,
        }
        meta: dict[str, Any] = {"name": name, "labels": dict(labels or {})}
        if owner_refs:
            meta["ownerReferences"] = [dict(o) for o in owner_refs]
        with self.core_v1() as v1:
            pod = v1.create_namespaced_pod(namespace, {"metadata": meta, "spec": spec})
            if ip is None:
                return pod
            ips = [ip] if isinstance(ip, str) else list(ip)
            status: dict[str, Any] = {
                "phase": phase,
                "podIP": ips[0],
                "podIPs": [{"ip": a} for a in ips],
            }
            if host_ip is not None:
                status["hostIP"] = host_ip
            elif host_network:
                status["hostIP"] = ips[0]
            return v1.patch_namespaced_pod_status(name, namespace, {"status": status})

    def set_pod_status(self, name: str, namespace: str, status: Mapping[str, Any]) -> Any:
        """Strategic-merge-patch a pod's status (e.g. a new phase or IP) and return the V1Pod."""
        with self.core_v1() as v1:
            return v1.patch_namespaced_pod_status(name, namespace, {"status": dict(status)})

    def delete_pod(self, name: str, namespace: str, *, wait: bool = True) -> None:
        """Delete a pod at once (grace period 0: no kubelet will finish a graceful delete)."""
        from kubernetes.client.rest import ApiException

        with self.core_v1() as v1:
            v1.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
            if not wait:
                return

            def gone() -> bool:
                try:
                    v1.read_namespaced_pod(name, namespace)
                except ApiException as e:
                    if e.status == 404:
                        return True
                    raise
                return False

            wait_for(gone, timeout=10, what=f"pod {namespace}/{name} to be deleted")


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()
