"""TLS for the emulator (``tickvault emulate --tls``): a certificate authority and a server
certificate generated at start, so that clients which insist on ``wss://`` (cryptofeed does) can
be pointed at the emulator, and so that the collector's own TLS path is exercised.

The CA is created fresh on every start (EC P-256, valid for one day, never written anywhere but
the directory given); clients are given the CA file (``SSL_CERT_FILE`` for Python's ``ssl``
default context, httpx and aiohttp; ``REQUESTS_CA_BUNDLE`` for requests). The server certificate
names ``localhost`` and ``127.0.0.1`` (subject alternative names, as clients verify host names).

Uses the ``cryptography`` package (X.509 builder, RFC 5280 extensions).
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Host names the server certificate is valid for.
SERVER_NAMES = ("localhost", "127.0.0.1", "::1")


def pem(cert: x509.Certificate) -> bytes:
    """The certificate in PEM."""
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The private key in unencrypted PKCS#8 PEM."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca(name: str, days: int = 1) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA (``CN=name``, basicConstraints CA, keyCertSign) valid from 5 minutes ago
    for ``days`` days. Returns ``(private key, certificate)``."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def make_server_cert(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
                     names: tuple[str, ...] = SERVER_NAMES, days: int = 1,
                     ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A server certificate signed by the CA, for ``names`` (DNS names or IP addresses, as
    subject alternative names; the first is the CN), extended key usage serverAuth."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    alt: list[x509.GeneralName] = []
    for n in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            alt.append(x509.DNSName(n))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


@dataclass(frozen=True)
class ServerTls:
    """Files of a generated CA + server certificate in ``directory``.

    Attributes:
        ca_file: the CA certificate (PEM): what clients must trust.
        cert_file / key_file: the server certificate and its private key (PEM).
    """

    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        """A server-side context with the generated certificate (TLS 1.2+)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def generate(directory: Path) -> ServerTls:
    """Create a CA and a server certificate for :data:`SERVER_NAMES` and write ``ca.crt``,
    ``server.crt`` and ``server.key`` (mode 0600) into ``directory`` (created if needed)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = make_ca("tickvault emulator CA")
    key, cert = make_server_cert(ca_key, ca_cert)
    files = ServerTls(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    files.ca_file.write_bytes(pem(ca_cert))
    files.cert_file.write_bytes(pem(cert))
    files.key_file.touch(mode=0o600)
    files.key_file.write_bytes(key_pem(key))
    return files
