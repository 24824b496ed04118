"""Oracle agreement: our quote verdicts equal tpm2_checkquote's on the same quotes.

Real quotes from swtpm (ECC and RSA AKs) and tampered variants of them go through both
``appraise_quote`` and tpm2-tools' ``tpm2_checkquote`` (signature, nonce, PCR digest). Only
the quote-level checks are compared: clock tracking and policies are ours alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from attest.core.errors import AttestationError
from attest.core.quote import appraise_quote
from attest.core.tpm_public import parse_tpm2b_public
from attest.tpm.device import Tpm
from attest.tpm.swtpm import Swtpm

pytestmark = [pytest.mark.swtpm,
              pytest.mark.skipif(shutil.which("tpm2_checkquote") is None,
                                 reason="tpm2-tools not installed (scripts/setup.sh)")]
# tpm2_checkquote 5.4 mis-reads PCR value files of more than 7 digests: quote 7 PCRs.
PCRS = [0, 1, 2, 3, 7, 14, 16]
SEL = {"sha256": PCRS}
Variant = Callable[[bytes, bytes, bytes, bytes], tuple[bytes, bytes, bytes, bytes]]


def flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1:]


VARIANTS: dict[str, Variant] = {
    "genuine": lambda a, s, v, n: (a, s, v, n),
    "attest.magic": lambda a, s, v, n: (flip(a, 0), s, v, n),
    "attest.extradata": lambda a, s, v, n: (flip(a, a.index(n)), s, v, n),
    "attest.last_byte": lambda a, s, v, n: (flip(a, len(a) - 1), s, v, n),
    "attest.clock": lambda a, s, v, n: (flip(a, a.index(n) + len(n) + 7), s, v, n),
    "signature.last_byte": lambda a, s, v, n: (a, flip(s, len(s) - 1), v, n),
    "signature.middle": lambda a, s, v, n: (a, flip(s, len(s) // 2), v, n),
    "nonce.other": lambda a, s, v, n: (a, s, v, os.urandom(len(n))),
    "pcr.first": lambda a, s, v, n: (a, s, flip(v, 0), n),
    "pcr.last": lambda a, s, v, n: (a, s, flip(v, len(v) - 1), n),
    # PCR 0 (zero) and PCR 14 (extended) exchanged: same multiset of values, wrong order.
    "pcr.swapped": lambda a, s, v, n: (a, s, v[160:192] + v[32:160] + v[:32] + v[192:], n),
}


def ours(ak_public: bytes, attest: bytes, sig: bytes, values: bytes, nonce: bytes) -> bool:
    pcr_values = {"sha256": {i: values[k * 32:(k + 1) * 32] for k, i in enumerate(PCRS)}}
    try:
        result = appraise_quote(parse_tpm2b_public(ak_public), attest, sig,
                                expected_nonce=nonce, pcr_values=pcr_values,
                                requested={"sha256": frozenset(PCRS)}, previous_clock=None)
    except AttestationError:
        return False
    return result.ok


def oracle(tmp: Path, ak_public: bytes, attest: bytes, sig: bytes, values: bytes,
           nonce: bytes) -> bool:
    for name, data in {"ak.pub": ak_public, "msg": attest, "sig": sig, "pcrs": values}.items():
        (tmp / name).write_bytes(data)
    proc = subprocess.run(
        ["tpm2_checkquote", "-u", str(tmp / "ak.pub"), "-m", str(tmp / "msg"), "-s",
         str(tmp / "sig"), "-f", str(tmp / "pcrs"), "-l", "sha256:" + ",".join(map(str, PCRS)),
         "-g", "sha256", "-q", nonce.hex()], capture_output=True, text=True, check=False)
    return proc.returncode == 0


@pytest.mark.parametrize("ak_kind", ["ecc", "rsa"])
def test_verdicts_agree_with_tpm2_checkquote(tmp_path: Path, ak_kind: str,
                                             swtpm_factory: Callable[[str], Swtpm]) -> None:
    tpm = swtpm_factory("oracle")
    with Tpm(tpm.tcti) as device:
        ak = device.load_or_create_ak(tmp_path / "agent", ak_kind)
        device.pcr_extend(14, b"k3s")
        quotes = []
        for _ in range(3):
            nonce = os.urandom(32)
            q = device.quote(nonce, SEL)
            values = b"".join(q.pcr_values["sha256"][i] for i in PCRS)
            quotes.append((q.attest, q.signature, values, nonce))
    agreed = {}
    for name, variant in VARIANTS.items():
        for attest, sig, values, nonce in quotes:
            a, s, v, n = variant(attest, sig, values, nonce)
            our_verdict = ours(ak.public, a, s, v, n)
            oracle_verdict = oracle(tmp_path, ak.public, a, s, v, n)
            assert our_verdict == oracle_verdict, (name, our_verdict, oracle_verdict)
            agreed[name] = our_verdict
    # The comparison is only meaningful if both sides accepted the genuine quotes and
    # rejected every tampered variant.
    assert agreed.pop("genuine") is True
    assert not any(agreed.values()), agreed


def test_quote_by_another_ak_rejected_by_both(tmp_path: Path,
                                              swtpm_factory: Callable[[str], Swtpm]) -> None:
    tpm = swtpm_factory("oracle")
    with Tpm(tpm.tcti) as device:
        ak = device.load_or_create_ak(tmp_path / "agent", "ecc")
        other = device.load_or_create_ak(tmp_path / "other", "ecc")
        nonce = os.urandom(32)
        device.load_or_create_ak(tmp_path / "other", "ecc")
        q = device.quote(nonce, SEL)
    values = b"".join(q.pcr_values["sha256"][i] for i in PCRS)
    assert ours(other.public, q.attest, q.signature, values, nonce) is True
    assert oracle(tmp_path, other.public, q.attest, q.signature, values, nonce) is True
    assert ours(ak.public, q.attest, q.signature, values, nonce) is False
    assert oracle(tmp_path, ak.public, q.attest, q.signature, values, nonce) is False
