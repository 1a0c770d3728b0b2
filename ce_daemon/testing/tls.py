"""A throwaway certificate authority with a server and a client certificate, for tests of TLS.

:func:`make_certificates` writes the PEM files (for receivers configured by path, such as rsyslogd);
:func:`self_signed_tls` wraps them in the server-side ``ssl.SSLContext`` an aiohttp fake listens with.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """A throwaway CA with a server and a client certificate (PEM files)."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    client_cert: Path
    client_key: Path


def make_certificates(
    directory: Path, *, hosts: tuple[str, ...] = ("localhost", "127.0.0.1"), name: str = "ce-daemon test"
) -> TlsFiles:
    """A fresh CA in ``directory`` and, signed by it, a server certificate for ``hosts`` and a client one.

    The server certificate is named after ``hosts[0]`` and lists every host (IP address or DNS name)
    as a subject alternative name. Files: ``ca.pem``, ``server.pem``/``server.key`` and
    ``client.pem``/``client.key`` (keys readable by the owner only).
    """
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue(f"{name} CA", ca_key, None, ca_key, now, usage=None)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _issue(hosts[0], server_key, ca, ca_key, now, usage=ExtendedKeyUsageOID.SERVER_AUTH, sans=hosts)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _issue(f"{name} client", client_key, ca, ca_key, now, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    return TlsFiles(
        ca_file=_write_certificate(ca, directory / "ca.pem"),
        cert_file=_write_certificate(server, directory / "server.pem"),
        key_file=_write_key(server_key, directory / "server.key"),
        client_cert=_write_certificate(client, directory / "client.pem"),
        client_key=_write_key(client_key, directory / "client.key"),
    )


def self_signed_tls(directory: Path, host: str = "127.0.0.1") -> tuple[ssl.SSLContext, Path]:
    """A new CA and a server certificate for ``host``: (server context, path of the CA's PEM).

    The files of :func:`make_certificates` are written to ``directory``. A client trusts a server
    using the context only when given the CA file (``tls.ca_file``).
    """
    files = make_certificates(directory, hosts=(host,))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.cert_file, files.key_file)
    return context, files.ca_file


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    now: dt.datetime,
    *,
    usage: x509.ObjectIdentifier | None,
    sans: tuple[str, ...] = (),
) -> x509.Certificate:
    """A certificate for ``subject`` signed by ``issuer_key``: the CA itself when ``usage`` is None."""
    subject_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    public = key.public_key()
    is_ca = usage is None
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject_name)
        .issuer_name(issuer.subject if issuer else subject_name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=0 if is_ca else None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=is_ca,
                crl_sign=is_ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if sans:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(host) for host in sans]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write_certificate(certificate: x509.Certificate, path: Path) -> Path:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)
    return path
