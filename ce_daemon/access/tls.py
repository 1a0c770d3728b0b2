"""TLS for the HTTP listener: the server context, and a self-signed certificate made on first start."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ce_daemon.config.model import ListenerTls

log = structlog.get_logger("ce_daemon.web")

SELF_SIGNED_CERT = "listener-cert.pem"
SELF_SIGNED_KEY = "listener-key.pem"
SELF_SIGNED_DAYS = 397
"""What browsers accept as a server certificate's longest life."""
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def server_context(tls: ListenerTls, data_dir: Path, host: str) -> ssl.SSLContext:
    """The context the listener serves TLS with: at least ``tls.min_version``, the operator's pair or ours."""
    if tls.self_signed:
        cert, key = self_signed(data_dir, host)
    else:
        assert tls.cert is not None and tls.key is not None  # the model requires both
        cert, key = tls.cert, tls.key
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = _VERSIONS[tls.min_version]
    context.load_cert_chain(cert, key, password=lambda: b"")
    return context


def self_signed(data_dir: Path, host: str) -> tuple[Path, Path]:
    """The self-signed certificate and key in ``data_dir`` for ``host``, made (warned of) when missing."""
    cert, key = data_dir / SELF_SIGNED_CERT, data_dir / SELF_SIGNED_KEY
    if cert.is_file() and key.is_file():
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    for name in {host, "127.0.0.1", "::1"}:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            if name and name not in ("0.0.0.0", "::", "localhost"):  # noqa: S104 - names compared, not bound
                names.append(x509.DNSName(name))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ce-daemon self-signed")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(private, hashes.SHA256())
    )
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    descriptor = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(pem)
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    fingerprint = certificate.fingerprint(hashes.SHA256()).hex(":")
    log.warning(
        "http.self_signed_certificate",
        cert=str(cert),
        sha256=fingerprint,
        hint="clients must be told to trust this certificate; give http.tls.cert and key for a real one",
    )
    return cert, key
