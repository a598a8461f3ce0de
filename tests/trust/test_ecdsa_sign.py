"""The runtime's pure-Python P-256 signer: RFC 6979's own vectors, and OpenSSL (``cryptography``) verifying it."""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from machines.runtime.images import ecdsa

# RFC 6979 appendix A.2.5: ECDSA, 256 bits (prime field), with SHA-256.
RFC_KEY = 0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721
RFC_VECTORS = [
    (b"sample", 0xEFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716,
     0xF7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8),
    (b"test", 0xF1ABB023518351CD71D881567B1EA663ED3EFCF6C5132B354F28D3B0B7D38367,
     0x019F4113742A2B14BD25926B49C649155F267E60D3814B4C0CC84250E46F0083),
]


def _pkcs8(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.mark.parametrize("message, r, s", RFC_VECTORS)
def test_rfc6979_vectors(message, r, s):
    assert decode_dss_signature(ecdsa.sign(RFC_KEY, message)) == (r, s)


@pytest.mark.parametrize("size", [0, 1, 64, 1000, 70000])
def test_openssl_verifies_our_signatures_and_rejects_them_for_other_data(size):
    key = ec.generate_private_key(ec.SECP256R1())
    secret = ecdsa.load_private_key(_pkcs8(key))
    assert secret == key.private_numbers().private_value
    message = bytes(range(256)) * (size // 256) + b"y" * (size % 256)
    signature = ecdsa.sign(secret, message)
    key.public_key().verify(signature, message, ec.ECDSA(hashes.SHA256()))  # raises if OpenSSL disagrees
    with pytest.raises(InvalidSignature):
        key.public_key().verify(signature, message + b"!", ec.ECDSA(hashes.SHA256()))
    assert ecdsa.sign(secret, message) == signature  # deterministic: no randomness to go wrong


def test_a_hundred_keys_sign_in_der_openssl_accepts():
    """Short r and s (leading zero bytes, high bits) must still encode as DER OpenSSL parses."""
    for number in range(100):
        key = ec.generate_private_key(ec.SECP256R1())
        message = b"payload %d" % number
        signature = ecdsa.sign(key.private_numbers().private_value, message)
        key.public_key().verify(signature, message, ec.ECDSA(hashes.SHA256()))


@pytest.mark.parametrize("pem, words", [
    (b"junk", "not a PEM private key"),
    (b"-----BEGIN PRIVATE KEY-----\n!!!\n-----END PRIVATE KEY-----\n", "bad base64"),
    (_pkcs8(ec.generate_private_key(ec.SECP384R1())), "only ECDSA P-256"),
    (_pkcs8(ed25519.Ed25519PrivateKey.generate()), "only ECDSA P-256"),
    (b"-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n", "not a PKCS#8 private key"),
])
def test_other_keys_are_refused_without_quoting_them(pem, words):
    with pytest.raises(ecdsa.KeyError_) as info:
        ecdsa.load_private_key(pem)
    assert words in str(info.value)
    assert "BEGIN" not in str(info.value)
