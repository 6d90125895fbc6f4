"""``retinad top``'s command line: bad flags and an unreachable daemon are clear errors
with exit codes 2 and 1, through the real ``retinad`` entry point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

RETINAD = [sys.executable, "-m", "retinad"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RETINAD, *args], capture_output=True, text=True, timeout=60)


def test_top_help_lists_its_flags_and_the_daemon_help_mentions_top() -> None:
    top = run("top", "--help")
    assert top.returncode == 0
    for flag in ("--url", "--sort", "--filter", "--basic-auth.password-file", "--tls.ca-file"):
        assert flag in top.stdout
    assert "retinad top --help" in run("--help").stdout


def test_bad_interval_is_a_usage_error() -> None:
    done = run("top", "--url", "http://127.0.0.1:1/metrics", "--interval", "0")
    assert (done.returncode, done.stderr) == (
        2,
        "retinad top: --interval: expected seconds above 0, got 0.0\n",
    )


def test_missing_config_file_names_it(tmp_path: Path) -> None:
    done = run("top", "--config.file", str(tmp_path / "nope.toml"))
    assert done.returncode == 2
    assert done.stderr.startswith(f"retinad top: {tmp_path / 'nope.toml'}")


def test_unreachable_daemon_names_the_url(free_port: int) -> None:
    url = f"http://127.0.0.1:{free_port}/metrics"
    done = run("top", "--url", url)
    assert done.returncode == 1
    assert done.stderr == f"retinad top: {url}: [Errno 111] Connection refused\n"


def test_web_config_with_client_certificates_needs_one(tmp_path: Path) -> None:
    """The web config's own validation runs first, and mutual TLS without a client
    certificate is refused before any connection."""
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
            "/CN=t",
            "-keyout",
            str(tmp_path / "k.pem"),
            "-out",
            str(tmp_path / "c.pem"),
        ],
        check=True,
        capture_output=True,
    )
    web = tmp_path / "web.yml"
    web.write_text(
        "tls_server_config:\n  cert_file: c.pem\n  key_file: k.pem\n"
        "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: c.pem\n"
    )
    cfg = tmp_path / "retinad.toml"  # not /etc/retinad's, whatever this host has there
    cfg.write_text("")
    done = run("top", "--config.file", str(cfg), "--web.config.file", str(web))
    assert done.returncode == 2
    assert done.stderr == (
        f"retinad top: {web}: client_auth_type RequireAndVerifyClientCert needs a client "
        "certificate: pass --tls.cert-file and --tls.key-file\n"
    )
