"""The EK's TPMT_PUBLIC must be one of the TCG EK Credential Profile templates, field for field.

An EK certificate binds only the EK's *public key*; the EK hash (sha256 of the TPM2B_PUBLIC bytes,
:func:`attest.core.ek.ek_public_hash`) covers every other field too. If any of those fields were
free, one TPM could present its EK under many hashes (a flipped authPolicy bit, an explicit
exponent 65537 instead of 0, a different symmetric mode) and be enrolled as many machines. So
every non-key field is pinned to a template of the "TCG EK Credential Profile for TPM Family 2.0"
(v2.5/2.6, §2.2.1.4 low range and §2.2.1.5 high range), and the key itself (``unique``) must have
exactly the size the TPM produces.

Accepted templates, one per key type and size:

====  =============  =======  ================================  =========  ===================
id    key            nameAlg  authPolicy                        symmetric  userWithAuth
====  =============  =======  ================================  =========  ===================
L-1   RSA 2048       SHA-256  PolicySecret(TPM_RH_ENDORSEMENT)  AES-128    clear
L-2   ECC NIST P256  SHA-256  PolicySecret(TPM_RH_ENDORSEMENT)  AES-128    clear
H-3   ECC NIST P384  SHA-384  PolicyOR(PolicyA, PolicyC)        AES-256    set
H-6   RSA 3072       SHA-384  PolicyOR(PolicyA, PolicyC)        AES-256    set
====  =============  =======  ================================  =========  ===================

All of them: fixedTPM, fixedParent, sensitiveDataOrigin, adminWithPolicy, restricted, decrypt
(and nothing else but userWithAuth for H), symmetric mode CFB, scheme NULL, RSA exponent 0
(= 65537), ECC kdf NULL. The unique field is the full-size modulus (256 / 384 bytes) or the two
full-size coordinates (32+32 / 48+48 bytes), as TPM2_CreatePrimary returns them.

H-1 (RSA 2048) and H-2 (ECC P-256) are deliberately *not* accepted: they use the same key type,
size, nameAlg and symmetric cipher as L-1 and L-2, so a TPM2_MakeCredential blob made for the
H form of a key is activated by the L form's private key. Accepting both would let anyone who
holds a node's L-1 EK public and certificate re-encode it as H-1 and enrol the same TPM under a
second EK hash. With exactly one template per (type, size) the TPM2B_PUBLIC is a function of
the public key, so one key has one EK hash. H-4 (P-521), H-5 (SM2) and H-7 (RSA 4096) are not
made by any TPM this project targets; adding one is a row in :data:`EK_TEMPLATES` as long as its
(type, size) is not already taken.

The high-range policy digests are the profile's PolicyB values (PolicyOR of PolicySecret(EH)
and PolicyAuthorizeNV(0x01C07F01/02)); they match tpm2-pytss, go-tpm and systemd's constants.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from attest.core.errors import AttestationError
from attest.core.tpm_marshal import EccCurve, TpmAlg
from attest.core.tpm_public import (
    EK_AUTH_POLICY_SHA256,
    EccPoint,
    ObjectAttributes,
    Scheme,
    SymDef,
    TpmPublic,
)

# PolicyB of the profile's high range: PolicyOR(PolicySecret(TPM_RH_ENDORSEMENT),
# PolicyAuthorizeNV(EK policy index)) in the template's nameAlg.
EK_AUTH_POLICY_HIGH_SHA256: Final = bytes.fromhex(
    "ca3d0a99a2b93906f7a3342414efcfb3a385d44cd1fd459089d19b5071c0b7a0")
EK_AUTH_POLICY_HIGH_SHA384: Final = bytes.fromhex(
    "b26e7d28d11a50bc53d882bcf5fd3a1a074148bb35d3b4e4"
    "cb1c0ad9bde419cacb47ba09699646150f9fc000f3f80e12")

_LOW_ATTRIBUTES: Final = (ObjectAttributes.FIXED_TPM | ObjectAttributes.FIXED_PARENT
                          | ObjectAttributes.SENSITIVE_DATA_ORIGIN
                          | ObjectAttributes.ADMIN_WITH_POLICY | ObjectAttributes.RESTRICTED
                          | ObjectAttributes.DECRYPT)
_HIGH_ATTRIBUTES: Final = _LOW_ATTRIBUTES | ObjectAttributes.USER_WITH_AUTH

_ATTRIBUTE_NAMES: Final = {
    ObjectAttributes.FIXED_TPM: "fixedTPM", ObjectAttributes.ST_CLEAR: "stClear",
    ObjectAttributes.FIXED_PARENT: "fixedParent",
    ObjectAttributes.SENSITIVE_DATA_ORIGIN: "sensitiveDataOrigin",
    ObjectAttributes.USER_WITH_AUTH: "userWithAuth",
    ObjectAttributes.ADMIN_WITH_POLICY: "adminWithPolicy", ObjectAttributes.NO_DA: "noDA",
    ObjectAttributes.ENCRYPTED_DUPLICATION: "encryptedDuplication",
    ObjectAttributes.RESTRICTED: "restricted", ObjectAttributes.DECRYPT: "decrypt",
    ObjectAttributes.SIGN_ENCRYPT: "sign", ObjectAttributes.X509_SIGN: "x509sign"}


class EkTemplateInvalid(AttestationError):
    """The EK public is not exactly a TCG EK Credential Profile template."""

    check = "enroll.ek_template"
    hint = ("Send the EK exactly as the TPM creates it from a TCG EK Credential Profile template "
            "(L-1 RSA 2048, L-2 ECC P-256, H-3 ECC P-384 or H-6 RSA 3072): `umec agent` and "
            "`tpm2_createek -G rsa|ecc` do. An EK public with any other field value is refused "
            "(a TPM with a vendor-specific EK template is not supported: report its model).")


@dataclass(frozen=True)
class EkTemplate:
    """One TCG EK template: every TPMT_PUBLIC field except the key itself."""

    id: str
    type: int
    size: int  # RSA keyBits, or the ECC curve's key size in bits
    curve: int  # TPM_ECC_CURVE for ECC, 0 for RSA
    name_alg: int
    attributes: ObjectAttributes
    auth_policy: bytes
    symmetric: SymDef

    @property
    def label(self) -> str:
        key = f"RSA {self.size}" if self.type == TpmAlg.RSA else f"ECC P-{self.size}"
        return f"{self.id} ({key})"

    @property
    def unique_bytes(self) -> int:
        """Length of the modulus, or of each ECC coordinate."""
        return (self.size + 7) // 8


_AES128_CFB: Final = SymDef(TpmAlg.AES, 128, TpmAlg.CFB)
_AES256_CFB: Final = SymDef(TpmAlg.AES, 256, TpmAlg.CFB)

EK_TEMPLATES: Final[tuple[EkTemplate, ...]] = (
    EkTemplate("L-1", TpmAlg.RSA, 2048, 0, TpmAlg.SHA256, _LOW_ATTRIBUTES,
               EK_AUTH_POLICY_SHA256, _AES128_CFB),
    EkTemplate("L-2", TpmAlg.ECC, 256, EccCurve.NIST_P256, TpmAlg.SHA256, _LOW_ATTRIBUTES,
               EK_AUTH_POLICY_SHA256, _AES128_CFB),
    EkTemplate("H-3", TpmAlg.ECC, 384, EccCurve.NIST_P384, TpmAlg.SHA384, _HIGH_ATTRIBUTES,
               EK_AUTH_POLICY_HIGH_SHA384, _AES256_CFB),
    EkTemplate("H-6", TpmAlg.RSA, 3072, 0, TpmAlg.SHA384, _HIGH_ATTRIBUTES,
               EK_AUTH_POLICY_HIGH_SHA384, _AES256_CFB),
)
_RSA_BY_BITS: Final = {t.size: t for t in EK_TEMPLATES if t.type == TpmAlg.RSA}
_ECC_BY_CURVE: Final = {t.curve: t for t in EK_TEMPLATES if t.type == TpmAlg.ECC}


def _alg(value: int) -> str:
    try:
        return f"{TpmAlg(value).name} (0x{value:04x})"
    except ValueError:
        return f"0x{value:04x}"


def _sym(s: SymDef | None) -> str:
    return "NULL" if s is None else f"{_alg(s.algorithm)}-{s.key_bits}-{_alg(s.mode)}"


def _scheme(s: Scheme | None) -> str:
    return "NULL" if s is None else f"{_alg(s.scheme)}/{_alg(s.hash_alg)}"


def _template_for(ek: TpmPublic) -> EkTemplate:
    """The one template for the EK's key type and size (keyBits or curveID)."""
    if ek.type == TpmAlg.RSA:
        found = _RSA_BY_BITS.get(ek.key_bits)
        if found is None:
            raise EkTemplateInvalid(
                f"EK keyBits is {ek.key_bits}; the accepted RSA EK templates are "
                + ", ".join(t.label for t in _RSA_BY_BITS.values()))
        return found
    if ek.type == TpmAlg.ECC:
        found = _ECC_BY_CURVE.get(ek.curve)
        if found is None:
            raise EkTemplateInvalid(
                f"EK curveID is 0x{ek.curve:04x}; the accepted ECC EK templates are "
                + ", ".join(t.label for t in _ECC_BY_CURVE.values()))
        return found
    raise EkTemplateInvalid(f"EK type is {_alg(ek.type)}; only RSA and ECC EKs have templates")


def _attributes_diff(have: ObjectAttributes, want: ObjectAttributes) -> str:
    extra = [n for bit, n in _ATTRIBUTE_NAMES.items() if have & bit and not want & bit]
    missing = [n for bit, n in _ATTRIBUTE_NAMES.items() if want & bit and not have & bit]
    parts = ([f"sets {', '.join(extra)}"] if extra else []) \
        + ([f"lacks {', '.join(missing)}"] if missing else [])
    return "; ".join(parts)


def _field_mismatches(ek: TpmPublic, t: EkTemplate) -> list[tuple[str, str, str]]:
    """(field, value found, value required) for each template field the EK does not match."""
    found: list[tuple[str, str, str]] = []
    if ek.name_alg != t.name_alg:
        found.append(("nameAlg", _alg(ek.name_alg), _alg(t.name_alg)))
    if ek.object_attributes != t.attributes:
        found.append(("objectAttributes",
                      f"0x{int(ek.object_attributes):08x} "
                      f"({_attributes_diff(ek.object_attributes, t.attributes)})",
                      f"0x{int(t.attributes):08x}"))
    if ek.auth_policy != t.auth_policy:
        found.append(("authPolicy", ek.auth_policy.hex() or "empty", t.auth_policy.hex()))
    if ek.symmetric != t.symmetric:
        found.append(("symmetric", _sym(ek.symmetric), _sym(t.symmetric)))
    if ek.scheme is not None:
        found.append(("scheme", _scheme(ek.scheme), "NULL"))
    if ek.type == TpmAlg.RSA and ek.exponent != 0:
        found.append(("exponent", str(ek.exponent), "0 (the default 65537)"))
    if ek.type == TpmAlg.ECC and ek.kdf is not None:
        found.append(("kdf", _scheme(ek.kdf), "NULL"))
    return found


def _check_unique(ek: TpmPublic, t: EkTemplate) -> None:
    """The key has exactly the size TPM2_CreatePrimary gives it (one encoding per key)."""
    n = t.unique_bytes
    if isinstance(ek.unique, EccPoint):
        sizes = tuple(len(c) for c in ek.unique)
        if sizes != (n, n):
            raise EkTemplateInvalid(
                f"EK unique is an ECC point of {sizes[0]}+{sizes[1]} bytes; TCG template "
                f"{t.label} requires {n}+{n}")
    elif len(ek.unique) != n:
        raise EkTemplateInvalid(
            f"EK unique is an RSA modulus of {len(ek.unique)} bytes; TCG template {t.label} "
            f"requires {n}")


def check_ek_template(ek: TpmPublic) -> None:
    """Raise :class:`EkTemplateInvalid` unless ``ek`` is exactly one of :data:`EK_TEMPLATES`.

    The detail names the first offending field with its value and the template's value, e.g.
    ``EK authPolicy is 8371…ab; TCG template L-1 (RSA 2048) requires 8371…aa``.
    """
    template = _template_for(ek)
    mismatches = _field_mismatches(ek, template)
    if mismatches:
        field, have, want = mismatches[0]
        more = f" (and {', '.join(m[0] for m in mismatches[1:])})" if len(mismatches) > 1 else ""
        raise EkTemplateInvalid(
            f"EK {field} is {have}; TCG template {template.label} requires {want}{more}")
    _check_unique(ek, template)


__all__ = [
    "EK_AUTH_POLICY_HIGH_SHA256", "EK_AUTH_POLICY_HIGH_SHA384", "EK_TEMPLATES", "EkTemplate",
    "EkTemplateInvalid", "check_ek_template",
]
