"""Certificates made for a test run (the ``cryptography`` package): a CA, a server
certificate for localhost / 127.0.0.1, client certificates (good, expired, and one from
another CA). EC P-256 keys: quick to make."""

from __future__ import annotations

import dataclasses
import datetime
import functools
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CLIENT_SANS = (b"client.example", b"spiffe://example.org/client")


@dataclasses.dataclass(frozen=True)
class Pem:
    key: bytes
    cert: bytes


@dataclasses.dataclass(frozen=True)
class Certs:
    ca: bytes                # the roots both sides trust
    server: Pem              # localhost, 127.0.0.1, ::1
    server_by_name: Pem      # localhost only (no IP SANs)
    client: Pem              # CN "client", SANs CLIENT_SANS
    client_cn_only: Pem      # CN "cn-only", no SANs
    expired: Pem             # by the right CA, expired yesterday
    stranger: Pem            # by another CA
    other_ca: bytes


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _key()
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(common_name))
            .issuer_name(_name(common_name)).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def _leaf(ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], common_name: str,
          sans: list[x509.GeneralName], usage: x509.ObjectIdentifier,
          expired: bool = False) -> Pem:
    ca_key, ca_cert = ca
    key = _key()
    now = datetime.datetime.now(datetime.timezone.utc)
    start = now - datetime.timedelta(days=10 if expired else 1)
    end = now - datetime.timedelta(days=1) if expired else now + datetime.timedelta(days=30)
    builder = (x509.CertificateBuilder().subject_name(_name(common_name))
               .issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca_key.public_key()), critical=False))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return Pem(_key_pem(key), cert.public_bytes(serialization.Encoding.PEM))


@functools.cache
def certs() -> Certs:
    """One set per test run (made in well under a second)."""
    ca = _ca("lanerpc test CA")
    other = _ca("another CA")
    server_sans: list[x509.GeneralName] = [
        x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1"))]
    client_sans: list[x509.GeneralName] = [
        x509.DNSName(CLIENT_SANS[0].decode()),
        x509.UniformResourceIdentifier(CLIENT_SANS[1].decode())]
    server_auth, client_auth = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH
    return Certs(
        ca=ca[1].public_bytes(serialization.Encoding.PEM),
        server=_leaf(ca, "localhost", server_sans, server_auth),
        server_by_name=_leaf(ca, "localhost", server_sans[:1], server_auth),
        client=_leaf(ca, "client", client_sans, client_auth),
        client_cn_only=_leaf(ca, "cn-only", [], client_auth),
        expired=_leaf(ca, "expired", client_sans, client_auth, expired=True),
        stranger=_leaf(other, "stranger", client_sans, client_auth),
        other_ca=other[1].public_bytes(serialization.Encoding.PEM),
    )
