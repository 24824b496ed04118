"""Keylime's quote inputs, built from our quote parts (no Keylime import needed here).

``keylime.tpm.tpm_util.checkquote(aikblob, nonce, sigblob, quoteblob, pcrblob, exp_hash_alg)``
takes the AK as a PEM SubjectPublicKeyInfo, the nonce as ``str`` (compared with the quote's
extraData as UTF-8, then as base64), TPMT_SIGNATURE and TPMS_ATTEST bytes as the TPM wrote
them, and the PCR values in the **tpm2-tools pcr blob** (what ``tpm2_quote -o`` writes, and
what the Rust keylime agent reproduces): C structs dumped from memory, *little-endian*, with
padding. Layout (x86-64; verified byte for byte against ``tpm2_quote -o`` by bench_quote.py):

1. TPML_PCR_SELECTION, 132 bytes: ``count`` (u32), then 16 TPMS_PCR_SELECTION slots of 8 bytes
   each: ``hash`` (u16), ``sizeofSelect`` (u8, 3), ``pcrSelect[4]`` (bit j of byte i selects
   PCR 8i+j), one padding byte. Unused slots are zero.
2. The number of TPML_DIGEST that follow (u32).
3. Each TPML_DIGEST, 532 bytes: ``count`` (u32), then 8 TPM2B_DIGEST slots of 66 bytes each:
   ``size`` (u16) and a 64-byte buffer (TPMU_HA is as large as SHA-512). tpm2-tools fills them
   from successive TPM2_PCR_Read calls, which return at most 8 digests each: banks in
   selection order, PCRs ascending.

Keylime's verifier receives the three blobs as one string ``r<b64 attest>:<b64 sig>:<b64 pcr
blob>`` and its AK as a base64 TPM2B_PUBLIC (``Tpm._tpm2_checkquote``).
"""

from __future__ import annotations

import base64
import struct

from attest.core.tpm_marshal import HASH_BY_NAME

_SLOTS = 16
_SEL_SLOT = struct.Struct("<HB4sx")  # hash, sizeofSelect, pcrSelect[4], padding
_DIGEST_SLOT = struct.Struct("<H64s")  # TPM2B_DIGEST with a TPMU_HA-sized buffer
_PER_READ = 8  # TPM2_PCR_Read returns at most 8 digests (TPML_DIGEST holds 8)


def pcr_blob(values: dict[str, dict[int, bytes]]) -> bytes:
    """The tpm2-tools pcr blob for ``values`` (bank -> PCR -> digest), banks in dict order."""
    if len(values) > _SLOTS:
        raise ValueError("at most 16 banks fit a TPML_PCR_SELECTION")
    sel = [struct.pack("<I", len(values))]
    digests: list[bytes] = []
    for bank, pcrs in values.items():
        bitmap = bytearray(4)
        for i in pcrs:
            if not 0 <= i < 24:
                raise ValueError(f"PCR {i} does not fit a 3-byte selection")
            bitmap[i // 8] |= 1 << (i % 8)
        sel.append(_SEL_SLOT.pack(HASH_BY_NAME[bank], 3, bytes(bitmap)))
        digests.extend(pcrs[i] for i in sorted(pcrs))
    sel.append(bytes(_SEL_SLOT.size * (_SLOTS - len(values))))
    chunks = [digests[i:i + _PER_READ] for i in range(0, len(digests), _PER_READ)]
    out = [*sel, struct.pack("<I", len(chunks))]
    for chunk in chunks:
        out.append(struct.pack("<I", len(chunk)))
        out.extend(_DIGEST_SLOT.pack(len(d), d) for d in chunk)
        out.append(bytes(_DIGEST_SLOT.size * (_PER_READ - len(chunk))))
    return b"".join(out)


def quote_string(attest: bytes, signature: bytes, pcrblob: bytes) -> str:
    """Keylime's wire form of a quote: ``r<b64 attest>:<b64 sig>:<b64 pcr blob>``."""
    enc = base64.b64encode
    return f"r{enc(attest).decode()}:{enc(signature).decode()}:{enc(pcrblob).decode()}"
