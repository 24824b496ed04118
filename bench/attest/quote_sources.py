"""The quotes bench_quote.py times: from SimulatedTpm and from a real swtpm (+ tpm2-tools).

Every :class:`QuoteCase` carries one quote in both implementations' input forms:

- ours: the AK as a parsed ``TpmPublic`` (and its TPM2B_PUBLIC bytes, for the cold path), the
  TPMS_ATTEST and TPMT_SIGNATURE bytes, the nonce, the PCR values as ``{bank: {pcr: bytes}}``;
- Keylime's: the AK as PEM and as base64 TPM2B_PUBLIC, the nonce as ``str``, the tpm2-tools pcr
  blob and the ``r…:…:…`` quote string (see keylime_format.py);
- the bare floor: the AK as a loaded ``cryptography`` key and the signature already converted to
  what ``verify`` takes (DER for ECDSA), plus the matching padding/algorithm objects.

Nonces are 32 ASCII characters (``secrets.token_urlsafe(24)``): the TPM quotes their bytes,
so Keylime's first comparison (``extraData == nonce.encode()``) matches, as in its pull mode.
All quotes select one bank (sha256: PCRs 0-3, 7, 14, the pi-k3s policy) because Keylime's
checkquote hashes only the bank of the signature hash.
"""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from keylime_format import pcr_blob, quote_string

from attest.core.tpm_structs import (
    ClockInfo,
    TpmAlg,
    TpmPublic,
    parse_tpm2b_public,
    parse_tpmt_signature,
)

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # the simulated TPM is test support (tests/support/simtpm.py)
    sys.path.insert(0, str(REPO))

from tests.support.simtpm import SimulatedTpm  # noqa: E402

SELECTION: dict[str, list[int]] = {"sha256": [0, 1, 2, 3, 7, 14]}
REQUESTED = {bank: frozenset(pcrs) for bank, pcrs in SELECTION.items()}
# A baseline older than any quote here: the clock check runs and passes, as in steady state.
PREVIOUS_CLOCK = ClockInfo(clock=0, reset_count=0, restart_count=0, safe=True)


@dataclass(frozen=True)
class QuoteCase:
    source: str  # "sim-ecc", "swtpm-ecc", "swtpm-rsa", "tpm2-tools-ecc"
    ak_tpm2b: bytes
    ak: TpmPublic
    attest: bytes
    signature: bytes
    nonce: bytes
    pcr_values: dict[str, dict[int, bytes]]
    # Keylime's forms
    ak_pem: bytes
    ak_b64: str
    nonce_str: str
    pcrblob: bytes
    quote_str: str
    # bare verification floor
    key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey
    bare_sig: bytes


def new_nonce() -> str:
    return secrets.token_urlsafe(24)  # 32 ASCII characters


def make_case(source: str, ak_tpm2b: bytes, attest: bytes, signature: bytes, nonce: str,
              values: dict[str, dict[int, bytes]], pcrblob: bytes | None = None) -> QuoteCase:
    ak = parse_tpm2b_public(ak_tpm2b)
    key = ak.public_key()
    pem = key.public_bytes(serialization.Encoding.PEM,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    sig = parse_tpmt_signature(signature)
    bare = (encode_dss_signature(int.from_bytes(sig.r, "big"), int.from_bytes(sig.s, "big"))
            if sig.sig_alg == TpmAlg.ECDSA else sig.sig)
    blob = pcr_blob(values) if pcrblob is None else pcrblob
    return QuoteCase(source, ak_tpm2b, ak, attest, signature, nonce.encode(), values, pem,
                     base64.b64encode(ak_tpm2b).decode(), nonce, blob,
                     quote_string(attest, signature, blob), key, bare)


def bare_verify(case: QuoteCase) -> None:
    """The floor: one signature verification with everything already decoded."""
    key = case.key
    if isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(case.bare_sig, case.attest, _ECDSA_SHA256)
    else:
        key.verify(case.bare_sig, case.attest, _PKCS1, _SHA256)


_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
_PKCS1 = padding.PKCS1v15()
_SHA256 = hashes.SHA256()


def simulated_cases(n: int, nodes: int = 4) -> list[QuoteCase]:
    """``n`` quotes from ``nodes`` SimulatedTpms (ECC P-256 AKs) with non-trivial PCRs."""
    tpms = [SimulatedTpm() for _ in range(nodes)]
    for k, tpm in enumerate(tpms):
        for pcr in SELECTION["sha256"]:
            tpm.extend(pcr, f"node {k} pcr {pcr} measurement".encode())
    out = []
    for i in range(n):
        tpm = tpms[i % nodes]
        nonce = new_nonce()
        attest, sig, values = tpm.quote(nonce.encode(), REQUESTED)
        out.append(make_case("sim-ecc", tpm.ak_public.marshal_tpm2b(), attest, sig, nonce,
                             values))
    return out


def swtpm_cases(n: int, workdir: Path | None = None) -> tuple[list[QuoteCase], str, Path]:
    """``n`` quotes each from an ECC P-256 and an RSA-2048 AK of one provisioned swtpm, plus
    one quote made by ``tpm2_quote`` whose ``-o`` pcr file is compared byte for byte with
    :func:`keylime_format.pcr_blob`. Returns the cases, a line describing that check and the
    directory holding tpm2-tools' files (ak.pub, quote.msg, quote.sig, quote.pcrs)."""
    from attest.tpm.device import Tpm
    from attest.tpm.swtpm import Swtpm, SwtpmCa

    base = workdir or Path(tempfile.mkdtemp(prefix="bench-quote-"))
    cases: list[QuoteCase] = []
    with Swtpm(base / "tpm", SwtpmCa(base / "ca")) as sw:
        with Tpm(sw.tcti, ek_kind="rsa") as tpm:
            for pcr in (7, 14):
                tpm.pcr_extend(pcr, f"bench measurement {pcr}".encode())
            for kind in ("ecc", "rsa"):
                ak = tpm.load_or_create_ak(base / f"ak-{kind}", kind)
                for _ in range(n):
                    nonce = new_nonce()
                    q = tpm.quote(nonce.encode(), SELECTION)
                    cases.append(make_case(f"swtpm-{kind}", ak.public, q.attest, q.signature,
                                           nonce, q.pcr_values))
            values = tpm.pcr_read(SELECTION)
        oracle, line = _tpm2_tools_quote(sw.tcti, base / "tools", values)
        cases.append(oracle)
    return cases, line, base / "tools"


def _tpm2_tools_quote(tcti: str, wd: Path, values: dict[str, dict[int, bytes]]
                      ) -> tuple[QuoteCase, str]:
    """A quote made by tpm2-tools itself; its pcr file is Keylime's input format by definition."""
    wd.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TPM2TOOLS_TCTI=tcti)
    nonce = new_nonce()

    def run(*args: str) -> None:
        proc = subprocess.run(args, cwd=wd, env=env, capture_output=True, text=True,
                              timeout=120)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed: {proc.stderr.strip()}")

    # swtpm has no resource manager and 3 object slots: flush what each tool leaves loaded.
    run("tpm2_createek", "-c", "ek.ctx", "-G", "rsa")
    run("tpm2_flushcontext", "-t")
    run("tpm2_createak", "-C", "ek.ctx", "-c", "ak.ctx", "-G", "ecc", "-g", "sha256", "-s",
        "ecdsa", "-u", "ak.pub")
    run("tpm2_flushcontext", "-t")
    run("tpm2_flushcontext", "-s")
    sel = ",".join(map(str, SELECTION["sha256"]))
    run("tpm2_quote", "-c", "ak.ctx", "-l", f"sha256:{sel}", "-q", nonce.encode().hex(),
        "-m", "quote.msg", "-s", "quote.sig", "-o", "quote.pcrs", "-g", "sha256")
    tools_blob = (wd / "quote.pcrs").read_bytes()
    mine = pcr_blob(values)
    if tools_blob != mine:
        raise SystemExit(f"pcr blob differs from tpm2_quote -o ({len(tools_blob)} vs "
                         f"{len(mine)} bytes): keylime_format.pcr_blob is wrong")
    case = make_case("tpm2-tools-ecc", (wd / "ak.pub").read_bytes(),
                     (wd / "quote.msg").read_bytes(), (wd / "quote.sig").read_bytes(), nonce,
                     values, pcrblob=tools_blob)
    return case, (f"pcr blob builder == `tpm2_quote -o` output, byte for byte "
                  f"({len(tools_blob)} bytes, sha256 PCRs {sel})")
