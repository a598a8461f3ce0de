"""Certificates for mutual TLS between the client and a machine's runtime.

One CA and one client certificate per store (``<store>/certs/``), made once; one server certificate per machine,
issued at provision time for the driver's address of the machine, its name and ``--tls-san``. Because ``start``
re-issues the server certificate when the IP changed (see ``server_cert_valid``), the "certificate is valid for X,
not Y" errors of Docker Machine do not happen. ECDSA P-256 keys: as widely supported as RSA by Go, OpenSSL and Python, and generated in microseconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import getpass
import ipaddress
import os
from collections.abc import Iterator
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from machines.errors import CertificateError
from machines.hostoptions import check_san
from machines.store import atomic_write

CA_VALIDITY = datetime.timedelta(days=1080)
LEAF_VALIDITY = datetime.timedelta(days=1080)
CLOCK_SKEW = datetime.timedelta(minutes=5)  # NotBefore in the past: hosts whose clock lags still accept the certs
RENEW_BEFORE = datetime.timedelta(days=30)  # a certificate this close to expiry counts as missing

CA_CERT, CA_KEY, CLIENT_CERT, CLIENT_KEY = "ca.pem", "ca-key.pem", "cert.pem", "key.pem"
SERVER_CERT, SERVER_KEY = "server.pem", "server-key.pem"


@dataclasses.dataclass(frozen=True)
class StoreCerts:
    """Paths of the store-wide CA and client certificate."""

    dir: Path

    @property
    def ca_cert(self) -> Path:
        return self.dir / CA_CERT

    @property
    def ca_key(self) -> Path:
        return self.dir / CA_KEY

    @property
    def client_cert(self) -> Path:
        return self.dir / CLIENT_CERT

    @property
    def client_key(self) -> Path:
        return self.dir / CLIENT_KEY


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` 0600 through a temporary file and a rename, so a reader never sees half a key."""
    atomic_write(path, data, mode=0o600)


@contextlib.contextmanager
def _locked(certs: StoreCerts) -> Iterator[None]:
    """Serialise CA work across threads and processes: parallel creates must not make two CAs."""
    certs.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(certs.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(organization: str, common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "machines"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as error:
        raise CertificateError(f"cannot read certificate {path}: {error}") from None


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as error:
        raise CertificateError(f"cannot read key {path}: {error}") from None
    return key  # type: ignore[return-value]


def _usable(cert_path: Path, key_path: Path) -> bool:
    """True when both files exist and the certificate is not expired nor about to."""
    if not (cert_path.is_file() and key_path.is_file()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError:
        return False
    return cert.not_valid_after_utc - RENEW_BEFORE > _now()


def _sign(
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    validity: datetime.timedelta,
    extensions: list[tuple[x509.ExtensionType, bool]],
) -> x509.Certificate:
    not_before = _now() - CLOCK_SKEW
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + validity)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


def _leaf_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=True,
        data_encipherment=False,
        key_agreement=True,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _make_ca(certs: StoreCerts) -> None:
    key = _new_key()
    name = _name(_user(), "machines CA")
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=True,
        data_encipherment=False,
        key_agreement=True,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    cert = _sign(
        name,
        key.public_key(),
        name,
        key,
        CA_VALIDITY,
        [
            (x509.BasicConstraints(ca=True, path_length=0), True),
            (usage, True),
            (x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False),
        ],
    )
    write_private(certs.ca_key, _key_pem(key))
    write_private(certs.ca_cert, _cert_pem(cert))


CA = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


def _load_ca(certs: StoreCerts) -> CA:
    """The CA's certificate and key, read together (under ``_locked``: a rotation cannot come between the reads)."""
    return load_cert(certs.ca_cert), _load_key(certs.ca_key)


def _issue_leaf(
    ca: CA,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    cert_path: Path,
    key_path: Path,
    sans: list[str] | None = None,
    validity: datetime.timedelta = LEAF_VALIDITY,
) -> None:
    """Sign a new key for ``subject`` with the store CA and write the pair (client or server certificate)."""
    ca_cert, ca_key = ca
    key = _new_key()
    extensions: list[tuple[x509.ExtensionType, bool]] = [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (_leaf_usage(), True),
        (x509.ExtendedKeyUsage([usage]), False),
    ]
    if sans:
        extensions.append((x509.SubjectAlternativeName([_san_entry(value) for value in sans]), False))
    cert = _sign(subject, key.public_key(), ca_cert.subject, ca_key, validity, extensions)
    write_private(key_path, _key_pem(key))
    write_private(cert_path, _cert_pem(cert))


def _make_client(certs: StoreCerts) -> None:
    subject = _name(f"{_user()}.client", "machines client")
    _issue_leaf(_load_ca(certs), subject, ExtendedKeyUsageOID.CLIENT_AUTH, certs.client_cert, certs.client_key)


def issue_user_client(certs: StoreCerts, user: str, validity: datetime.timedelta, folder: Path) -> x509.Certificate:
    """A client certificate of the store CA for another person (``machines share``): ``cert.pem``/``key.pem`` and
    the CA's ``ca.pem`` in ``folder``, the layout ``DOCKER_CERT_PATH`` expects. The CA key stays here."""
    with _locked(certs):
        _issue_leaf(_load_ca(certs), _name(f"{user}.shared", user), ExtendedKeyUsageOID.CLIENT_AUTH, folder / CLIENT_CERT,
                    folder / CLIENT_KEY, validity=validity)
        write_private(folder / CA_CERT, certs.ca_cert.read_bytes())
    return load_cert(folder / CLIENT_CERT)


def revocation_list(certs: StoreCerts, serials: list[int]) -> bytes:
    """A CRL of the store CA naming ``serials`` (PEM), valid as long as the CA: the runtime checks client
    certificates against it (a CRL past its next update would refuse every client)."""
    ca_cert, ca_key = load_cert(certs.ca_cert), _load_key(certs.ca_key)
    now = _now() - CLOCK_SKEW
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now)
        .next_update(ca_cert.not_valid_after_utc)
    )
    for serial in sorted(set(serials)):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        )
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def ensure_store_certs(store_root: str | os.PathLike[str], *, rotate: bool = False) -> StoreCerts:
    """Make the store's CA and client certificate when missing or near expiry (or always, with ``rotate``).

    A new CA always brings a new client certificate, since the old one would no longer verify.
    """
    certs = StoreCerts(Path(store_root) / "certs")
    with _locked(certs):
        os.chmod(certs.dir, 0o700)
        new_ca = rotate or not _usable(certs.ca_cert, certs.ca_key)
        if new_ca:
            _make_ca(certs)
        if new_ca or not _usable(certs.client_cert, certs.client_key):
            _make_client(certs)
    return certs


def _san_entry(value: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        return x509.DNSName(value)


def server_sans(addresses: list[str], hostname: str | None, extra: list[str]) -> list[str]:
    """Every name the server certificate must be valid for, deduplicated, in a stable order.

    ``addresses`` are the driver's, ``hostname`` the machine's name and ``extra`` the user's ``--tls-san``: never
    anything the host said about itself."""
    wanted = [*addresses, *([hostname] if hostname else []), "localhost", "127.0.0.1", *map(check_san, extra)]
    return list(dict.fromkeys(value.strip() for value in wanted if value and value.strip()))


def issue_server_cert(
    certs: StoreCerts, machine_dir: str | os.PathLike[str], machine_name: str, sans: list[str]
) -> tuple[Path, Path]:
    """Issue ``server.pem``/``server-key.pem`` in the machine dir, signed by the store CA; returns their paths."""
    directory = Path(machine_dir)
    cert_path, key_path = directory / SERVER_CERT, directory / SERVER_KEY
    subject = _name(f"{_user()}.{machine_name}", machine_name)
    with _locked(certs):
        ca = _load_ca(certs)
    # Signed and written (fsync) outside the store's lock: parallel creates each write only their own machine's.
    _issue_leaf(ca, subject, ExtendedKeyUsageOID.SERVER_AUTH, cert_path, key_path, sans)
    return cert_path, key_path


def copy_client_certs(certs: StoreCerts, machine_dir: str | os.PathLike[str]) -> None:
    """Put ca.pem, cert.pem and key.pem in the machine dir, the folder ``DOCKER_CERT_PATH`` points at."""
    directory = Path(machine_dir)
    files = [(certs.ca_cert, CA_CERT), (certs.client_cert, CLIENT_CERT), (certs.client_key, CLIENT_KEY)]
    with _locked(certs):  # read as one set; written outside the lock, like the server certificate
        contents = [(name, source.read_bytes()) for source, name in files]
    for name, data in contents:
        write_private(directory / name, data)


def cert_sans(cert_path: Path) -> list[str]:
    """The SAN values of a certificate, IPs and DNS names as strings."""
    try:
        extension = load_cert(cert_path).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(value) for value in extension.get_values_for_type(x509.IPAddress)] + list(
        extension.get_values_for_type(x509.DNSName)
    )


def server_cert_valid(machine_dir: str | os.PathLike[str], certs: StoreCerts, addresses: list[str]) -> bool:
    """True when the machine's server certificate exists, is signed by the store CA, is not near expiry and
    covers every one of ``addresses``; False means it must be re-issued."""
    directory = Path(machine_dir)
    cert_path = directory / SERVER_CERT
    if not _usable(cert_path, directory / SERVER_KEY) or not certs.ca_cert.is_file():
        return False
    cert, ca = load_cert(cert_path), load_cert(certs.ca_cert)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    covered = set(cert_sans(cert_path))
    return all(str(ipaddress.ip_address(a)) in covered if _is_ip(a) else a in covered for a in addresses)


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
