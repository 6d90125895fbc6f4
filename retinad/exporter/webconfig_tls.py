"""TLS of the web config: Go's names for versions, curves and cipher suites, and the
``ssl.SSLContext`` built from ``tls_server_config`` (see webconfig.py for where Python's
``ssl`` differs from Go's ``crypto/tls``)."""

from __future__ import annotations

import ssl

from retinad.errors import WebConfigError
from retinad.exporter.webconfig_model import TLSServerConfig

TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
CURVES = {"CurveP256": "prime256v1", "CurveP384": "secp384r1", "CurveP521": "secp521r1"}
CURVES["X25519"] = "X25519"
CIPHER_SUITES = {
    # Go's tls.CipherSuites() names -> OpenSSL names. TLS 1.3 suites map to None.
    "TLS_AES_128_GCM_SHA256": None,
    "TLS_AES_256_GCM_SHA384": None,
    "TLS_CHACHA20_POLY1305_SHA256": None,
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
}


def os_reason(err: BaseException) -> str:
    if isinstance(err, FileNotFoundError):
        return "no such file"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror.lower()
    return str(err)


def build_ssl_context(tls: TLSServerConfig, *, source: str) -> ssl.SSLContext:
    """A server context for ``tls``; WebConfigError if a file is missing or does not load."""
    where = f"{source}: tls_server_config"
    for key in ("cert_file", "key_file", "client_ca_file"):
        name = getattr(tls, key)
        try:
            if name:
                with open(name, "rb"):
                    pass
        except OSError as err:
            raise WebConfigError(f'{where}.{key}: cannot read "{name}": {os_reason(err)}') from err
    try:  # a throwaway context tells "not a certificate" apart from "wrong key"
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=tls.cert_file)
    except (ssl.SSLError, OSError) as err:
        raise WebConfigError(
            f'{where}.cert_file: "{tls.cert_file}" holds no PEM certificate ({_ssl_reason(err)})'
        ) from err
    ctx = _fresh_context(tls)
    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    except (ssl.SSLError, OSError) as err:
        if getattr(err, "reason", "") == "KEY_VALUES_MISMATCH":
            raise WebConfigError(
                f'{where}.key_file: "{tls.key_file}" does not match the certificate in '
                f'"{tls.cert_file}"'
            ) from err
        raise WebConfigError(
            f'{where}.key_file: "{tls.key_file}" holds no usable private key ({_ssl_reason(err)})'
        ) from err
    if tls.client_ca_file:
        try:
            ctx.load_verify_locations(cafile=tls.client_ca_file)
        except (ssl.SSLError, OSError) as err:
            raise WebConfigError(
                f'{where}.client_ca_file: "{tls.client_ca_file}" holds no PEM certificate '
                f"({_ssl_reason(err)})"
            ) from err
        ctx.verify_mode = (
            ssl.CERT_REQUIRED
            if tls.client_auth_type == "RequireAndVerifyClientCert"
            else ssl.CERT_OPTIONAL
        )
    return ctx


def _fresh_context(tls: TLSServerConfig) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = TLS_VERSIONS[tls.min_version]
    ctx.maximum_version = TLS_VERSIONS[tls.max_version]
    ciphers = [c for c in (CIPHER_SUITES[n] for n in tls.cipher_suites) if c]
    if ciphers:
        ctx.set_ciphers(":".join(ciphers))
    if tls.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    first = CURVES[tls.curve_preferences[0]] if tls.curve_preferences else "X25519"
    if first != "X25519":  # X25519 first is OpenSSL's own default order already
        ctx.set_ecdh_curve(first)
    return ctx


def _ssl_reason(err: BaseException) -> str:
    if isinstance(err, ssl.SSLError):
        return str(err.reason or err.strerror or err).lower().replace("_", " ")
    return os_reason(err)
