"""ECDSA P-256 signatures in pure Python, for sigstore (cosign) signatures: verification, and signing on push.

The runtime must stay standard-library only and run wherever python3 does, so it cannot count on an ``openssl``
binary or the ``cryptography`` package on the host. Verification needs only public data, so constant time does not
matter and plain affine arithmetic with modular inverses (``pow(x, -1, p)``) is short, easy to check and fast enough
(a few milliseconds per signature). Keys are PEM ``PUBLIC KEY`` (SubjectPublicKeyInfo) as cosign writes them;
signatures are ASN.1 DER ``SEQUENCE { r INTEGER, s INTEGER }`` over SHA-256 of the payload (FIPS 186-4, SEC 1).

Signing (``docker push`` under a signing policy) takes its nonce from RFC 6979 (HMAC-SHA256 deterministic ``k``), so
no random-number weakness on a freshly booted host can leak the key. Python's integers are not constant time:
the time a signature takes depends on the nonce's bits, which someone timing many signatures on the host itself
could use; the key file is root's alone, and a signature is made once per push, not on demand for strangers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterator
from typing import Optional

# NIST P-256 (secp256r1), SEC 2 section 2.4.2.
P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
A = P - 3
B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
G = (0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
     0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5)
OID_EC_PUBLIC_KEY = "1.2.840.10045.2.1"
OID_P256 = "1.2.840.10045.3.1.7"

Point = Optional[tuple[int, int]]  # None is the point at infinity


class KeyError_(ValueError):
    """A public key or signature that cannot be parsed (the caller turns it into its own error)."""


def _add(p1: Point, p2: Point) -> Point:
    if p1 is None:
        return p2
    if p2 is None:
        return p1
    (x1, y1), (x2, y2) = p1, p2
    if x1 == x2:
        if (y1 + y2) % P == 0:
            return None
        slope = (3 * x1 * x1 + A) * pow(2 * y1, -1, P) % P
    else:
        slope = (y2 - y1) * pow(x2 - x1, -1, P) % P
    x3 = (slope * slope - x1 - x2) % P
    return x3, (slope * (x1 - x3) - y1) % P


def _mul_add(u1: int, p1: Point, u2: int, p2: Point) -> Point:
    """u1*p1 + u2*p2 with one shared double-and-add pass (Shamir's trick)."""
    both = _add(p1, p2)
    result: Point = None
    for bit in range(max(u1.bit_length(), u2.bit_length()) - 1, -1, -1):
        result = _add(result, result)
        pick = ((u1 >> bit) & 1, (u2 >> bit) & 1)
        if pick == (1, 1):
            result = _add(result, both)
        elif pick == (1, 0):
            result = _add(result, p1)
        elif pick == (0, 1):
            result = _add(result, p2)
    return result


def on_curve(point: tuple[int, int]) -> bool:
    x, y = point
    return 0 <= x < P and 0 <= y < P and (y * y - (x * x * x + A * x + B)) % P == 0


# --- DER, only as much as keys and signatures need -------------------------------------------------------------

def _der_item(data: bytes, pos: int) -> tuple[int, bytes, int]:
    """(tag, contents, next position) of the DER item at ``pos``."""
    if pos + 2 > len(data):
        raise KeyError_("truncated DER")
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise KeyError_("bad DER length")
        length = int.from_bytes(data[pos:pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise KeyError_("truncated DER")
    return tag, data[pos:pos + length], pos + length


def _der_sequence(data: bytes) -> list:
    tag, body, end = _der_item(data, 0)
    if tag != 0x30 or end != len(data):
        raise KeyError_("expected one DER SEQUENCE")
    return _der_children(body)


def _der_children(body: bytes) -> list:
    """(tag, contents) of each item in a SEQUENCE's contents."""
    items, pos = [], 0
    while pos < len(body):
        tag, contents, pos = _der_item(body, pos)
        items.append((tag, contents))
    return items


def _oid(contents: bytes) -> str:
    if not contents:
        raise KeyError_("empty OID")
    parts = [contents[0] // 40, contents[0] % 40]
    value = 0
    for byte in contents[1:]:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(value)
            value = 0
    return ".".join(map(str, parts))


def _pem_der(pem: bytes | str, label: str) -> bytes:
    text = pem.decode("ascii", "replace") if isinstance(pem, bytes) else pem
    match = re.search(rf"-----BEGIN {label}-----(.*?)-----END {label}-----", text, re.S)
    if not match:
        raise KeyError_(f"not a PEM {label.lower()}")
    try:
        return base64.b64decode("".join(match.group(1).split()), validate=True)
    except ValueError:
        raise KeyError_(f"bad base64 in PEM {label.lower()}") from None


def load_public_key(pem: bytes | str) -> tuple[int, int]:
    """The P-256 point of a PEM ``PUBLIC KEY``; KeyError_ for anything else (RSA, other curves, junk)."""
    items = _der_sequence(_pem_der(pem, "PUBLIC KEY"))
    if len(items) != 2 or items[0][0] != 0x30 or items[1][0] != 0x03:
        raise KeyError_("not a SubjectPublicKeyInfo")
    oids = [_oid(c) for t, c in _der_children(items[0][1]) if t == 0x06]
    if oids != [OID_EC_PUBLIC_KEY, OID_P256]:
        raise KeyError_("only ECDSA P-256 public keys are supported")
    bits = items[1][1]
    if not bits or bits[0] != 0:
        raise KeyError_("bad public key bit string")
    return decode_point(bits[1:])


def decode_point(raw: bytes) -> tuple[int, int]:
    """SEC 1 uncompressed (04||X||Y) or compressed (02/03||X) point, checked to be on the curve."""
    if len(raw) == 65 and raw[0] == 4:
        point = (int.from_bytes(raw[1:33], "big"), int.from_bytes(raw[33:], "big"))
    elif len(raw) == 33 and raw[0] in (2, 3):
        x = int.from_bytes(raw[1:], "big")
        y = pow((x * x * x + A * x + B) % P, (P + 1) // 4, P)  # P = 3 (mod 4): the square root
        if y % 2 != raw[0] % 2:
            y = P - y
        point = (x, y)
    else:
        raise KeyError_("bad public key point encoding")
    if not on_curve(point):
        raise KeyError_("public key point is not on P-256")
    return point


def decode_signature(der: bytes) -> tuple[int, int]:
    items = _der_sequence(der)
    if len(items) != 2 or any(tag != 0x02 for tag, _ in items):
        raise KeyError_("signature is not a DER ECDSA signature")
    return int.from_bytes(items[0][1], "big"), int.from_bytes(items[1][1], "big")


def verify(public_key: tuple[int, int], signature_der: bytes, message: bytes) -> bool:
    """Whether ``signature_der`` is a valid ECDSA-SHA256 signature of ``message`` by ``public_key``."""
    try:
        r, s = decode_signature(signature_der)
    except KeyError_:
        return False
    if not (1 <= r < N and 1 <= s < N):
        return False
    e = int.from_bytes(hashlib.sha256(message).digest(), "big")
    w = pow(s, -1, N)
    point = _mul_add(e * w % N, G, r * w % N, public_key)
    return point is not None and point[0] % N == r


# --- signing -----------------------------------------------------------------------------------------------------

def load_private_key(pem: bytes | str) -> int:
    """The secret scalar of an unencrypted PKCS#8 PEM ``PRIVATE KEY`` for P-256; KeyError_ otherwise.

    The error never quotes the key's bytes: callers put it in messages."""
    items = _der_sequence(_pem_der(pem, "PRIVATE KEY"))
    if len(items) < 3 or items[0][0] != 0x02 or items[1][0] != 0x30 or items[2][0] != 0x04:
        raise KeyError_("not a PKCS#8 private key")
    if [_oid(c) for t, c in _der_children(items[1][1]) if t == 0x06] != [OID_EC_PUBLIC_KEY, OID_P256]:
        raise KeyError_("only ECDSA P-256 private keys are supported")
    inner = _der_sequence(items[2][1])  # ECPrivateKey (SEC 1): version 1, the scalar, optional parameters/point
    if len(inner) < 2 or inner[0] != (0x02, b"\x01") or inner[1][0] != 0x04:
        raise KeyError_("not an EC private key")
    scalar = int.from_bytes(inner[1][1], "big")
    if not 1 <= scalar < N:
        raise KeyError_("private key out of range")
    return scalar


def _nonces(secret: int, digest: bytes) -> Iterator[int]:
    """RFC 6979 section 3.2 candidates for ``k`` (HMAC-SHA256, qlen = hlen = 256)."""
    x, h = secret.to_bytes(32, "big"), (int.from_bytes(digest, "big") % N).to_bytes(32, "big")
    v, k = b"\x01" * 32, b"\x00" * 32
    for separator in (b"\x00", b"\x01"):
        k = hmac.new(k, v + separator + x + h, hashlib.sha256).digest()
        v = hmac.new(k, v, hashlib.sha256).digest()
    while True:
        v = hmac.new(k, v, hashlib.sha256).digest()
        candidate = int.from_bytes(v, "big")
        if 1 <= candidate < N:
            yield candidate
        k = hmac.new(k, v + b"\x00", hashlib.sha256).digest()
        v = hmac.new(k, v, hashlib.sha256).digest()


def _der_integer(value: int) -> bytes:
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")  # a leading zero byte keeps it positive
    return b"\x02" + bytes([len(body)]) + body


def sign(secret: int, message: bytes) -> bytes:
    """The DER ECDSA-SHA256 signature of ``message`` by the private scalar ``secret`` (deterministic ``k``)."""
    digest = hashlib.sha256(message).digest()
    e = int.from_bytes(digest, "big")
    for k in _nonces(secret, digest):
        point = _mul_add(k, G, 0, None)
        assert point is not None  # k < N: kG is never the point at infinity
        r = point[0] % N
        s = pow(k, -1, N) * (e + r * secret) % N
        if r and s:
            body = _der_integer(r) + _der_integer(s)
            return b"\x30" + bytes([len(body)]) + body
    raise AssertionError("unreachable: the nonce generator never ends")
