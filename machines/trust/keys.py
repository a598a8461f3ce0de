"""cosign's key pair files: ``PREFIX.key`` (ENCRYPTED SIGSTORE PRIVATE KEY) and ``PREFIX.pub`` (PEM PUBLIC KEY).

The private key file is sigstore/sigstore's ``pkg/encrypted`` format: PEM around JSON ``{"kdf": {"name": "scrypt",
"params": {"N": 32768, "r": 8, "p": 1}, "salt": b64}, "cipher": {"name": "nacl/secretbox", "nonce": b64},
"ciphertext": b64}``, where the scrypt-derived 32-byte key seals the PKCS#8 DER of an ECDSA P-256 key with NaCl
secretbox. cosign and skopeo read these files, and ``machines`` reads the ones they write (also the older
"ENCRYPTED COSIGN PRIVATE KEY" label).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from pathlib import Path

import nacl.exceptions
import nacl.secret
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from machines.errors import TrustError

PEM_LABEL = "ENCRYPTED SIGSTORE PRIVATE KEY"
PEM_LABELS = (PEM_LABEL, "ENCRYPTED COSIGN PRIVATE KEY")
SCRYPT_N, SCRYPT_R, SCRYPT_P = 32768, 8, 1
MAX_SCRYPT_N = 1 << 20


def _scrypt(passphrase: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(passphrase, salt=salt, n=n, r=r, p=p, dklen=32, maxmem=256 * r * (n + p + 2) + (1 << 20))


def encrypt_private_key(key: ec.EllipticCurvePrivateKey, passphrase: bytes) -> bytes:
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    salt, nonce = os.urandom(32), os.urandom(nacl.secret.SecretBox.NONCE_SIZE)
    box = nacl.secret.SecretBox(_scrypt(passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P))
    doc = {"kdf": {"name": "scrypt", "params": {"N": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P},
                   "salt": base64.b64encode(salt).decode()},
           "cipher": {"name": "nacl/secretbox", "nonce": base64.b64encode(nonce).decode()},
           "ciphertext": base64.b64encode(box.encrypt(der, nonce).ciphertext).decode()}
    body = base64.b64encode(json.dumps(doc).encode()).decode()
    lines = "\n".join(body[i:i + 64] for i in range(0, len(body), 64))
    return f"-----BEGIN {PEM_LABEL}-----\n{lines}\n-----END {PEM_LABEL}-----\n".encode()


def decrypt_private_key(pem: bytes, passphrase: bytes) -> ec.EllipticCurvePrivateKey:
    """The key inside a cosign/sigstore encrypted key file; TrustError for a wrong passphrase or another format."""
    text = pem.decode("ascii", "replace")
    match = re.search(r"-----BEGIN ([A-Z ]+)-----(.*?)-----END \1-----", text, re.S)
    if not match or match.group(1) not in PEM_LABELS:
        raise TrustError(f"not an encrypted sigstore private key (expected a {PEM_LABEL} PEM block)")
    try:
        doc = json.loads(base64.b64decode("".join(match.group(2).split()), validate=True))
        kdf, cipher = doc["kdf"], doc["cipher"]
        params = kdf["params"]
        n, r, p = int(params["N"]), int(params["r"]), int(params["p"])
        salt, nonce = base64.b64decode(kdf["salt"]), base64.b64decode(cipher["nonce"])
        ciphertext = base64.b64decode(doc["ciphertext"])
    except (ValueError, KeyError, TypeError) as exc:
        raise TrustError(f"malformed encrypted private key: {exc}") from None
    if kdf.get("name") != "scrypt" or cipher.get("name") != "nacl/secretbox":
        raise TrustError("unsupported private key encryption (need scrypt with nacl/secretbox)")
    if not (1 < n <= MAX_SCRYPT_N and n & (n - 1) == 0 and 0 < r <= 32 and 0 < p <= 16):
        raise TrustError("unsupported scrypt parameters in the private key")
    try:
        der = nacl.secret.SecretBox(_scrypt(passphrase, salt, n, r, p)).decrypt(ciphertext, nonce)
    except (nacl.exceptions.CryptoError, ValueError):
        raise TrustError("decrypt: encrypted: decryption failed (wrong passphrase?)") from None
    key = serialization.load_der_private_key(der, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise TrustError("only ECDSA P-256 private keys are supported")
    return key


def public_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def generate(prefix: str, passphrase: bytes) -> tuple[Path, Path]:
    """Write ``PREFIX.key`` (0600) and ``PREFIX.pub``; refuse to overwrite either (as cosign asks before it does)."""
    private_path, public_path = Path(prefix + ".key"), Path(prefix + ".pub")
    for path in (private_path, public_path):
        if path.exists():
            raise TrustError(f"{path} already exists: remove it or choose another prefix")
    key = ec.generate_private_key(ec.SECP256R1())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(encrypt_private_key(key, passphrase))
    public_path.write_bytes(public_pem(key))
    return private_path, public_path


def read_passphrase(passphrase_file: Path | None, *, confirm: bool) -> bytes:
    """From ``--passphrase-file`` (first line), else ``COSIGN_PASSWORD`` like cosign, else a prompt."""
    if passphrase_file is not None:
        try:
            return passphrase_file.read_bytes().split(b"\n", 1)[0].rstrip(b"\r")
        except OSError as exc:
            raise TrustError(f"cannot read passphrase file {passphrase_file}: {exc.strerror}") from None
    if "COSIGN_PASSWORD" in os.environ:
        return os.environ["COSIGN_PASSWORD"].encode()
    import getpass

    first = getpass.getpass("Enter password for private key: ")
    if confirm and getpass.getpass("Enter password for private key again: ") != first:
        raise TrustError("passwords do not match")
    return first.encode()
