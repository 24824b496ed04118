"""TPM object templates used by the node agent (tpm2-pytss types).

* EK templates are the TCG "EK Credential Profile for TPM Family 2.0" low-range defaults: L-1
  (RSA-2048, NV cert 0x01C00002) and L-2 (ECC NIST P-256, NV cert 0x01C0000A), both with the
  standard authPolicy ``PolicySecret(TPM_RH_ENDORSEMENT)`` and adminWithPolicy, no userWithAuth.
  tpm2-pytss' ``create_ek_template`` also applies a vendor template or nonce stored next to the
  certificate (0x01C00004 / 0x01C00003 …) when present, so the key we create is the one the
  certificate was issued for.
* AK templates: restricted signing keys (restricted | sign | fixedTPM | fixedParent |
  sensitiveDataOrigin | userWithAuth | noDA) with a fixed scheme, ECDSA-SHA256 on P-256 or
  RSASSA-SHA256 on RSA-2048, so a quote signature cannot be produced with another scheme.
  ``noDA``: the AK's authValue is empty and the agent uses it with a password session for every
  Quote and ActivateCredential. Without noDA each such use marks the TPM "DA used", and every
  power-off without TPM2_Shutdown after it counts as an authorisation failure at the next
  TPM2_Startup (TPM 2.0 Part 1, "Dictionary Attack Protection"); swtpm locks out after 3 and a
  Raspberry Pi that loses power a few times stops attesting. An empty authValue has nothing to
  guess, so exempting the AK from DA protection costs nothing. (The EK needs no such flag: the
  agent authorises it with a PolicySecret(TPM_RH_ENDORSEMENT) policy session, which neither uses
  its authValue nor a DA-protected hierarchy, and the TCG template fixes its attributes.)
"""

from __future__ import annotations

from typing import Any, Literal

from tpm2_pytss.constants import TPM2_ALG, TPM2_ECC, TPMA_OBJECT
from tpm2_pytss.types import (
    TPM2B_PUBLIC,
    TPMS_ECC_PARMS,
    TPMS_RSA_PARMS,
    TPMS_SCHEME_HASH,
    TPMT_ECC_SCHEME,
    TPMT_KDF_SCHEME,
    TPMT_PUBLIC,
    TPMT_RSA_SCHEME,
    TPMT_SYM_DEF_OBJECT,
    TPMU_ASYM_SCHEME,
    TPMU_PUBLIC_PARMS,
)

Kind = Literal["rsa", "ecc"]

EK_TYPES: dict[str, str] = {"rsa": "EK-RSA2048", "ecc": "EK-ECC256"}
EK_CERT_INDEX: dict[str, int] = {"rsa": 0x01C00002, "ecc": 0x01C0000A}

AK_ATTRIBUTES = (TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.FIXEDTPM
                 | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.SENSITIVEDATAORIGIN
                 | TPMA_OBJECT.USERWITHAUTH | TPMA_OBJECT.NODA)


def check_kind(kind: str) -> Kind:
    if kind not in ("rsa", "ecc"):
        raise ValueError(f"key kind must be 'rsa' or 'ecc', not {kind!r}")
    return "rsa" if kind == "rsa" else "ecc"


def ak_template(kind: Kind) -> Any:
    """TPM2B_PUBLIC template of an attestation key of ``kind``."""
    sha256 = TPMS_SCHEME_HASH(hashAlg=TPM2_ALG.SHA256)
    null_sym = TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.NULL)
    if kind == "ecc":
        parms = TPMU_PUBLIC_PARMS(eccDetail=TPMS_ECC_PARMS(
            symmetric=null_sym,
            scheme=TPMT_ECC_SCHEME(scheme=TPM2_ALG.ECDSA, details=TPMU_ASYM_SCHEME(ecdsa=sha256)),
            curveID=TPM2_ECC.NIST_P256,
            kdf=TPMT_KDF_SCHEME(scheme=TPM2_ALG.NULL)))
        alg = TPM2_ALG.ECC
    else:
        parms = TPMU_PUBLIC_PARMS(rsaDetail=TPMS_RSA_PARMS(
            symmetric=null_sym,
            scheme=TPMT_RSA_SCHEME(scheme=TPM2_ALG.RSASSA,
                                   details=TPMU_ASYM_SCHEME(rsassa=sha256)),
            keyBits=2048, exponent=0))
        alg = TPM2_ALG.RSA
    return TPM2B_PUBLIC(publicArea=TPMT_PUBLIC(
        type=alg, nameAlg=TPM2_ALG.SHA256, objectAttributes=AK_ATTRIBUTES, parameters=parms))
