"""The webhook's own certificate authority and serving certificates (no cert-manager).

Decide, don't do: these functions make and read PEM; :mod:`pullmedic.admission.tls` keeps
them in a Secret and in the webhook configuration's ``caBundle``. The CA lives long and
signs short-lived serving certificates, so a serving rotation never changes what the API
server trusts; a CA rotation keeps the old CA in the bundle until it expires.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Renew when less than this fraction of a certificate's lifetime is left: a third, as
# cert-manager does by default, leaves two thirds of a lifetime to notice a failure.
RENEW_FRACTION = 1 / 3
CA_NAME = "pullmedic-webhook-ca"


@dataclass(frozen=True)
class Pair:
    """A certificate and its private key, PEM."""

    cert: bytes
    key: bytes

    def not_before(self) -> dt.datetime:
        return load(self.cert).not_valid_before_utc

    def not_after(self) -> dt.datetime:
        return load(self.cert).not_valid_after_utc


@dataclass(frozen=True)
class Bundle:
    """What the Secret holds: the CA (with its key), the serving pair, and the CAs the API
    server must trust (the current CA first, then any older one still valid)."""

    ca: Pair
    serving: Pair
    trusted: bytes

    def as_secret_data(self) -> dict[str, bytes]:
        return {
            "ca.crt": self.trusted,
            "ca.key": self.ca.key,
            "tls.crt": self.serving.cert,
            "tls.key": self.serving.key,
        }


def load(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def _skew(validity: dt.timedelta) -> dt.timedelta:
    """How far back a certificate starts, for clocks behind ours: five minutes, but never
    enough to change when a short-lived one is due."""
    return min(dt.timedelta(minutes=5), validity / 20)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def new_ca(now: dt.datetime, validity: dt.timedelta) -> Pair:
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _skew(validity))
        .not_valid_after(now + validity)
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Pair(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


def dns_names(service: str, namespace: str) -> list[str]:
    """The names the API server may use for the webhook's Service."""
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


def issue(
    ca: Pair,
    names: list[str],
    now: dt.datetime,
    validity: dt.timedelta,
    *,
    addresses: tuple[str, ...] = (),
) -> Pair:
    """A serving certificate for ``names`` (and IP ``addresses``), signed by ``ca``."""

    ca_cert = load(ca.cert)
    ca_key = serialization.load_pem_private_key(ca.key, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key is not an EC key")
    key = _key()
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    not_after = min(now + validity, ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _skew(validity))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return Pair(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


def due(pair: Pair, now: dt.datetime, fraction: float = RENEW_FRACTION) -> bool:
    """True once less than ``fraction`` of the certificate's lifetime is left."""
    start, end = pair.not_before(), pair.not_after()
    return now >= end - (end - start) * fraction


def renew_at(pair: Pair, fraction: float = RENEW_FRACTION) -> dt.datetime:
    start, end = pair.not_before(), pair.not_after()
    return end - (end - start) * fraction


def split_pem(bundle: bytes) -> list[bytes]:
    """The certificates of a PEM bundle, each as its own PEM."""
    marker = b"-----END CERTIFICATE-----"
    return [part.strip() + b"\n" + marker + b"\n" for part in bundle.split(marker)[:-1]]


def trusted_bundle(current: Pair, older: bytes, now: dt.datetime) -> bytes:
    """The current CA first, then older CAs from ``older`` that are still valid and
    different: serving certificates they signed keep working until they are replaced."""
    out = [current.cert.strip() + b"\n"]
    for pem in split_pem(older):
        try:
            cert = load(pem)
        except ValueError:
            continue
        if cert.not_valid_after_utc > now and pem.strip() != current.cert.strip():
            out.append(pem.strip() + b"\n")
    return b"".join(out)


def matches(serving: Pair, ca: Pair, names: list[str], addresses: tuple[str, ...] = ()) -> bool:
    """The serving certificate was signed by ``ca``, names every name and address, and its
    key is its own (a Secret edited by hand, or half written, is replaced, not served)."""

    try:
        cert = load(serving.cert)
        key = serialization.load_pem_private_key(serving.key, password=None)
        ca_cert = load(ca.cert)
        cert.verify_directly_issued_by(ca_cert)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature):
        return False
    own = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    ips = {str(a) for a in san.get_values_for_type(x509.IPAddress)}
    return (
        own
        and set(names) <= set(san.get_values_for_type(x509.DNSName))
        and {str(ipaddress.ip_address(a)) for a in addresses} <= ips
    )


def ca_matches(ca: Pair) -> bool:
    """The CA key belongs to the CA certificate."""
    try:
        cert = load(ca.cert)
        key = serialization.load_pem_private_key(ca.key, password=None)
    except (ValueError, TypeError):
        return False
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return key.public_key().public_bytes(der, spki) == cert.public_key().public_bytes(der, spki)


@dataclass(frozen=True)
class Renewal:
    """The bundle to serve and, when it differs from what was stored, why."""

    bundle: Bundle
    reason: str = ""  # "" when the stored bundle stays

    @property
    def changed(self) -> bool:
        return bool(self.reason)


def renew(
    stored: dict[str, bytes] | None,
    now: dt.datetime,
    names: list[str],
    *,
    ca_validity: dt.timedelta,
    serving_validity: dt.timedelta,
    addresses: tuple[str, ...] = (),
) -> Renewal:
    """What to serve given the Secret's data: keep it, issue a serving certificate from
    the same CA, or start a new CA (keeping the old one trusted while it is valid)."""
    data = stored or {}
    ca = Pair(data.get("ca.crt", b""), data.get("ca.key", b""))
    trusted_before = ca.cert
    if ca.cert:
        first = split_pem(ca.cert)  # the current CA leads the bundle
        ca = Pair(first[0] if first else b"", ca.key)
    reason = ""
    if not ca.cert or not ca_matches(ca):
        reason = "no usable CA in the Secret"
    elif due(ca, now):
        reason = f"the CA expires at {ca.not_after().isoformat()}"
    if reason:
        ca = new_ca(now, ca_validity)
    serving = Pair(data.get("tls.crt", b""), data.get("tls.key", b""))
    if reason:
        serving = issue(ca, names, now, serving_validity, addresses=addresses)
    elif not matches(serving, ca, names, addresses):
        reason = "no serving certificate from this CA for the Service's names"
        serving = issue(ca, names, now, serving_validity, addresses=addresses)
    elif due(serving, now):
        reason = f"the serving certificate expires at {serving.not_after().isoformat()}"
        serving = issue(ca, names, now, serving_validity, addresses=addresses)
    trusted = trusted_bundle(ca, trusted_before, now)
    if not reason and trusted != data.get("ca.crt", b""):
        reason = "an old CA in the bundle expired"
    return Renewal(Bundle(ca, serving, trusted), reason)
