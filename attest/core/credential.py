"""TPM2_MakeCredential in software (TPM 2.0 Part 1 §24 "Credential Protection", Annex B/C).

The verifier proves that an AK lives in the same TPM as an EK: it wraps a random secret so that
only that EK's private key can unwrap it, and only for an object whose Name is the AK's Name.
Steps of :func:`make_credential`, each as the TPM's own TPM2_MakeCredential performs them:

1. Seed (Part 1 §24.4 / Annex B.10.3, C.6.4), ``len(seed)`` = digest size of the EK's nameAlg:
   - RSA EK: a random seed, encrypted with RSA-OAEP (hash and MGF1 = nameAlg) under the EK with
     the label ``"IDENTITY\\0"``; the ciphertext is the encrypted secret.
   - ECC EK: an ephemeral key on the EK's curve; ``Z`` = x of ECDH(ephemeral, EK);
     ``seed = KDFe(nameAlg, Z, "IDENTITY", x_ephemeral, x_EK)``; the encrypted secret is the
     ephemeral public point (TPMS_ECC_POINT).
2. ``symKey = KDFa(nameAlg, seed, "STORAGE", Name(AK), "", EK symmetric keyBits)``.
3. ``encIdentity = AES-CFB(symKey, IV = 0, TPM2B_DIGEST(secret))`` (§24.4).
4. ``HMACkey = KDFa(nameAlg, seed, "INTEGRITY", "", "", digest bits)``;
   ``outerHMAC = HMAC_nameAlg(HMACkey, encIdentity || Name(AK))`` (§24.5).
5. ``credentialBlob`` = TPM2B_ID_OBJECT(TPM2B_DIGEST(outerHMAC) || encIdentity);
   ``secret`` = TPM2B_ENCRYPTED_SECRET(step 1 output).

TPM2_ActivateCredential reverses this only if the HMAC over the *loaded* AK's Name matches,
so a blob made for another AK fails. Randomness comes from the ``rng`` parameter.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Final

from cryptography.hazmat.primitives import hmac
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

try:  # CFB moved to the "decrepit" namespace in cryptography 47; TPMs still use it.
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.modes import CFB  # type: ignore[assignment,unused-ignore]

from attest.core.errors import AttestationError
from attest.core.tpm_marshal import TpmAlg, digest, hash_info, tpm2b, u32
from attest.core.tpm_public import EccPoint, ObjectAttributes, TpmPublic

IDENTITY_LABEL: Final = b"IDENTITY\x00"
# Curve orders, to turn rng bytes into an ephemeral scalar deterministically (FIPS 186-4 B.4.1).
_CURVE_ORDERS: Final = {
    "secp256r1": int("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551", 16),
    "secp384r1": int("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF"
                     "581A0DB248B0A77AECEC196ACCC52973", 16),
    "secp521r1": int("1" + "F" * 65 + "A51868783BF2F966B7FCC0148F709A5D03BB5C9B8899C47AEBB6FB71E"
                     "91386409", 16),
}


class EkUnsupported(AttestationError):
    check = "credential.ek"
    hint = ("The EK is not a restricted RSA/ECC decryption key with an AES-CFB symmetric "
            "definition; use the TCG default EK template.")


class CredentialInputInvalid(AttestationError):
    check = "credential.input"
    hint = "The AK Name or the secret for MakeCredential is malformed; this is a verifier bug."


def kdfa(hash_alg: int, key: bytes, label: bytes, context_u: bytes, context_v: bytes,
         bits: int) -> bytes:
    """KDFa (Part 1 §11.4.10.2, SP 800-108 counter mode with HMAC).

    Each block is HMAC(key, counter || label || 0x00 || contextU || contextV || bits); the label's
    terminating zero is added unless the caller's label already ends in one.
    """
    hash_cls = hash_info(hash_alg, "KDFa")[2]
    label = label if label.endswith(b"\x00") else label + b"\x00"
    tail = label + context_u + context_v + u32(bits)
    out = b""
    counter = 1
    while len(out) * 8 < bits:
        h = hmac.HMAC(key, hash_cls())
        h.update(u32(counter) + tail)
        out += h.finalize()
        counter += 1
    return _truncate(out, bits)


def kdfe(hash_alg: int, z: bytes, label: bytes, party_u: bytes, party_v: bytes,
         bits: int) -> bytes:
    """KDFe (Part 1 §11.4.10.3, SP 800-56A concat KDF): H(counter || Z || label || U || V)."""
    label = label if label.endswith(b"\x00") else label + b"\x00"
    out = b""
    counter = 1
    while len(out) * 8 < bits:
        out += digest(hash_alg, u32(counter), z, label, party_u, party_v)
        counter += 1
    return _truncate(out, bits)


def _truncate(out: bytes, bits: int) -> bytes:
    nbytes = (bits + 7) // 8
    out = out[:nbytes]
    if bits % 8:  # keep only the low ``bits`` bits of the first octet
        out = bytes((out[0] & ((1 << (bits % 8)) - 1),)) + out[1:]
    return out


def aes_cfb(key: bytes, data: bytes, *, decrypt: bool = False) -> bytes:
    """AES in CFB-128 mode with a zero IV, as the TPM protects credentials and duplicates."""
    cipher = Cipher(algorithms.AES(key), CFB(b"\x00" * 16))
    ctx = cipher.decryptor() if decrypt else cipher.encryptor()
    return ctx.update(data) + ctx.finalize()


def credential_hmac(hash_alg: int, hmac_key: bytes, enc_identity: bytes, name: bytes) -> bytes:
    h = hmac.HMAC(hmac_key, hash_info(hash_alg, "HMAC")[2]())
    h.update(enc_identity + name)
    return h.finalize()


def _check_ek(ek: TpmPublic) -> int:
    """The EK must be a restricted decryption (storage) key with AES-CFB; returns AES key bits."""
    attrs = ek.object_attributes
    if not (attrs & ObjectAttributes.RESTRICTED and attrs & ObjectAttributes.DECRYPT):
        raise EkUnsupported(f"EK attributes 0x{int(attrs):08x} lack restricted|decrypt")
    sym = ek.symmetric
    if sym is None or sym.algorithm != TpmAlg.AES or sym.mode != TpmAlg.CFB:
        raise EkUnsupported(f"EK symmetric definition {sym} is not AES-CFB")
    return sym.key_bits


def _check_name(name: bytes) -> None:
    if len(name) < 2:
        raise CredentialInputInvalid(f"AK Name {name.hex()!r} is too short")
    alg = int.from_bytes(name[:2], "big")
    try:
        size = hash_info(alg, "AK Name")[1]
    except AttestationError:
        raise CredentialInputInvalid(f"AK Name uses unknown hash 0x{alg:04x}") from None
    if len(name) != 2 + size:
        raise CredentialInputInvalid(f"AK Name {name.hex()} has a {len(name) - 2}-byte digest")


def _ecc_seed(ek: TpmPublic, seed_bits: int,
              rng: Callable[[int], bytes]) -> tuple[bytes, bytes]:
    """(seed, TPMS_ECC_POINT of the ephemeral key) for an ECC EK (Part 1 Annex C.6.4)."""
    ek_key = ek.public_key()
    assert isinstance(ek_key, ec.EllipticCurvePublicKey) and isinstance(ek.unique, EccPoint)
    order = _CURVE_ORDERS.get(ek_key.curve.name)
    if order is None:
        raise EkUnsupported(f"EK curve {ek_key.curve.name} is not supported")
    size = (ek_key.curve.key_size + 7) // 8
    # 64 extra bits make the modular bias negligible (FIPS 186-4 B.4.1).
    scalar = int.from_bytes(rng(size + 8), "big") % (order - 1) + 1
    eph = ec.derive_private_key(scalar, ek_key.curve)
    z = eph.exchange(ec.ECDH(), ek_key)
    nums = eph.public_key().public_numbers()
    ex, ey = nums.x.to_bytes(size, "big"), nums.y.to_bytes(size, "big")
    seed = kdfe(ek.name_alg, z, IDENTITY_LABEL, ex, ek.unique.x, seed_bits)
    return seed, tpm2b(ex) + tpm2b(ey)


def make_credential(ek: TpmPublic, ak_name: bytes, secret: bytes, *,
                    rng: Callable[[int], bytes] = os.urandom) -> tuple[bytes, bytes]:
    """(TPM2B_ID_OBJECT credentialBlob, TPM2B_ENCRYPTED_SECRET) binding ``secret`` to ``ak_name``.

    For an RSA EK the OAEP padding draws its own randomness inside OpenSSL, so only the blob
    (not the encrypted secret) is a pure function of ``rng``.
    """
    sym_bits = _check_ek(ek)
    _check_name(ak_name)
    name_alg = ek.name_alg
    digest_size = hash_info(name_alg, "EK nameAlg")[1]
    if not 0 < len(secret) <= digest_size:
        raise CredentialInputInvalid(
            f"secret of {len(secret)} bytes; it must be 1..{digest_size} bytes for this EK")
    hash_cls = hash_info(name_alg, "EK nameAlg")[2]
    ek_key = ek.public_key()
    if isinstance(ek_key, rsa.RSAPublicKey):
        seed = rng(digest_size)
        encrypted = ek_key.encrypt(seed, padding.OAEP(padding.MGF1(hash_cls()), hash_cls(),
                                                      IDENTITY_LABEL))
    else:
        seed, encrypted = _ecc_seed(ek, digest_size * 8, rng)
    sym_key = kdfa(name_alg, seed, b"STORAGE", ak_name, b"", sym_bits)
    enc_identity = aes_cfb(sym_key, tpm2b(secret))
    hmac_key = kdfa(name_alg, seed, b"INTEGRITY", b"", b"", digest_size * 8)
    outer = credential_hmac(name_alg, hmac_key, enc_identity, ak_name)
    return tpm2b(tpm2b(outer) + enc_identity), tpm2b(encrypted)


__all__ = ["IDENTITY_LABEL", "CredentialInputInvalid", "EkUnsupported", "aes_cfb",
           "credential_hmac", "kdfa", "kdfe", "make_credential"]
