"""Node identity checks at enrolment: the AK's attributes and the EK↔node-name binding.

An attestation key is only worth something if the TPM guarantees that it never leaves the TPM
(fixedTPM, fixedParent, sensitiveDataOrigin) and that it signs only TPM-generated structures
(restricted + sign, not decrypt). Bit positions are TPMA_OBJECT from TPM 2.0 Part 2 §8.3.
"""

from __future__ import annotations

from attest.core.errors import AttestationError
from attest.core.tpm_public import ObjectAttributes
from attest.core.tpm_structs import TpmPublic

_REQUIRED = {"fixedTPM": ObjectAttributes.FIXED_TPM, "fixedParent": ObjectAttributes.FIXED_PARENT,
             "sensitiveDataOrigin": ObjectAttributes.SENSITIVE_DATA_ORIGIN,
             "restricted": ObjectAttributes.RESTRICTED, "sign": ObjectAttributes.SIGN_ENCRYPT}


class AkAttributesInvalid(AttestationError):
    check = "enroll.ak_attributes"
    hint = ("Create the AK as a restricted signing key that never leaves the TPM "
            "(fixedTPM|fixedParent|sensitiveDataOrigin|restricted|sign); `umec agent` does this.")


class EkMismatch(AttestationError):
    check = "enroll.ek_mismatch"
    status = 409
    hint = ("This node name is bound to another TPM. If the node's TPM was really replaced, an "
            "operator must remove the node (umec nodes remove NAME) before it enrols again.")


class AkMismatch(AttestationError):
    check = "enroll.ak_mismatch"
    status = 409
    hint = ("This node already activated another AK; the EK↔AK binding is immutable. Restore the "
            "agent's AK state directory, or have an operator remove the node.")


class ActivationFailed(AttestationError):
    check = "activate.proof"
    status = 403
    hint = "The credential was not activated by the enrolled TPM; enrol again from the node itself."


def check_ak_attributes(ak: TpmPublic) -> None:
    attrs = int(ak.object_attributes)
    missing = [name for name, bit in _REQUIRED.items() if not attrs & bit]
    if missing:
        raise AkAttributesInvalid(f"AK lacks {', '.join(missing)} (attributes 0x{attrs:08x})")
    if attrs & ObjectAttributes.DECRYPT:
        raise AkAttributesInvalid(f"AK is also a decryption key (attributes 0x{attrs:08x})")
