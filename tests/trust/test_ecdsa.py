"""The runtime's pure-Python P-256 verifier against signatures and keys made by ``cryptography`` (OpenSSL)."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from machines.runtime.images import ecdsa


def _pem(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.mark.parametrize("size", [0, 1, 55, 64, 1000, 70000])
def test_signatures_made_by_openssl_verify_and_altered_ones_do_not(size):
    key = ec.generate_private_key(ec.SECP256R1())
    point = ecdsa.load_public_key(_pem(key))
    message = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    signature = key.sign(message, ec.ECDSA(hashes.SHA256()))
    assert ecdsa.verify(point, signature, message)
    assert not ecdsa.verify(point, signature, message + b"!")
    r, s = decode_dss_signature(signature)
    assert not ecdsa.verify(point, encode_dss_signature(r, (s + 1) % ecdsa.N), message)
    assert not ecdsa.verify(point, encode_dss_signature(r, ecdsa.N - s + 1), message)
    other = ecdsa.load_public_key(_pem(ec.generate_private_key(ec.SECP256R1())))
    assert not ecdsa.verify(other, signature, message)


def test_the_negated_s_signature_is_also_valid_as_ecdsa_defines():
    key = ec.generate_private_key(ec.SECP256R1())
    r, s = decode_dss_signature(key.sign(b"m", ec.ECDSA(hashes.SHA256())))
    assert ecdsa.verify(ecdsa.load_public_key(_pem(key)), encode_dss_signature(r, ecdsa.N - s), b"m")


@pytest.mark.parametrize("r, s", [(0, 1), (1, 0), (ecdsa.N, 1), (1, ecdsa.N)])
def test_out_of_range_r_and_s_are_refused(r, s):
    point = ecdsa.load_public_key(_pem(ec.generate_private_key(ec.SECP256R1())))
    assert not ecdsa.verify(point, encode_dss_signature(r, s), b"m")


def test_garbage_signatures_are_false_not_errors():
    point = ecdsa.load_public_key(_pem(ec.generate_private_key(ec.SECP256R1())))
    for junk in (b"", b"\x30", b"\x30\x06\x02\x01\x01\x02\x01", b"\x30\x84\xff\xff\xff\xff", b"\x02\x01\x01" * 3):
        assert not ecdsa.verify(point, junk, b"m")


def test_compressed_points_decode_to_the_same_key():
    key = ec.generate_private_key(ec.SECP256R1())
    compressed = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    numbers = key.public_key().public_numbers()
    assert ecdsa.decode_point(compressed) == (numbers.x, numbers.y)


@pytest.mark.parametrize("make", [
    lambda: _pem(ec.generate_private_key(ec.SECP384R1())),
    lambda: _pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)),
    lambda: b"-----BEGIN PUBLIC KEY-----\n" + base64.b64encode(b"\x30\x03\x02\x01\x01") + b"\n-----END PUBLIC KEY-----",
    lambda: b"not a key",
])
def test_other_keys_are_refused(make):
    with pytest.raises(ecdsa.KeyError_):
        ecdsa.load_public_key(make())


def test_a_point_off_the_curve_is_refused():
    key = ec.generate_private_key(ec.SECP256R1())
    raw = bytearray(key.public_key().public_bytes(serialization.Encoding.X962,
                                                  serialization.PublicFormat.UncompressedPoint))
    raw[-1] ^= 1
    with pytest.raises(ecdsa.KeyError_, match="not on P-256"):
        ecdsa.decode_point(bytes(raw))
