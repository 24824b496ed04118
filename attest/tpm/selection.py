"""PCR selections: ``{"sha256": [0, 7]}`` dictionaries to and from TPML_PCR_SELECTION.

A selection is marshalled with ``sizeofSelect = 3`` (PCRs 0..23, what PC-client TPMs implement);
:func:`selected` reads any size back, in the order the TPM lists banks, which is the order the
quote's ``pcrDigest`` hashes them in.
"""

from __future__ import annotations

from typing import Any

from tpm2_pytss.constants import TPM2_ALG
from tpm2_pytss.types import TPML_PCR_SELECTION, TPMS_PCR_SELECTION

BANKS: dict[str, Any] = {"sha1": TPM2_ALG.SHA1, "sha256": TPM2_ALG.SHA256,
                         "sha384": TPM2_ALG.SHA384, "sha512": TPM2_ALG.SHA512}


def bank_alg(bank: str) -> Any:
    try:
        return BANKS[bank]
    except KeyError:
        raise ValueError(f"unknown PCR bank {bank!r}; use one of {sorted(BANKS)}") from None


def selection_of(selection: dict[str, list[int]]) -> Any:
    banks = []
    for bank, indices in selection.items():
        if any(not 0 <= i < 24 for i in indices):
            raise ValueError(f"PCR index out of range in {bank}: {indices}")
        bits = bytearray(3)
        for i in indices:
            bits[i // 8] |= 1 << (i % 8)
        banks.append(TPMS_PCR_SELECTION(hash=bank_alg(bank), sizeofSelect=3,
                                        pcrSelect=bytes(bits)))
    return TPML_PCR_SELECTION(pcrSelections=banks)


def selected(sel: Any) -> list[tuple[str, list[int]]]:
    """(bank, ascending indices) in the order a TPML_PCR_SELECTION lists them."""
    names = {int(v): k for k, v in BANKS.items()}
    out = []
    for i in range(sel.count):
        s = sel.pcrSelections[i]
        bits = bytes(s.pcrSelect)[: s.sizeofSelect]
        idx = [n for n in range(8 * len(bits)) if bits[n // 8] >> (n % 8) & 1]
        out.append((names.get(int(s.hash), f"alg{int(s.hash):#x}"), idx))
    return out
