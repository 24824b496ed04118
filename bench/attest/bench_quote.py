"""Benchmark: one quote check, ours (``appraise_quote``) vs Keylime (``checkquote``) vs the floor.

Run from the repo root, in the benchmark venv that holds both (bench/attest/setup_keylime.sh)::

    bench/.venv-keylime/bin/python bench/attest/bench_quote.py [--blocks 30 --per-block 100]

Steps:

1. Build the quotes (quote_sources.py): SimulatedTpm ECC P-256 AKs, and a real swtpm with an
   ECC P-256 and an RSA-2048 AK through tpm2-pytss, plus one ``tpm2_quote`` quote whose pcr file
   must equal our Keylime pcr-blob builder byte for byte.
2. Agreement, before any timing: every valid quote is ACCEPTED by both implementations (and
   Keylime's returned PCR dict equals ours); a tampered signature, a tampered TPMS_ATTEST, a
   wrong nonce and a tampered PCR value are REJECTED by both. Any disagreement aborts.
3. Timing, per quote source, interleaved (benchlib.py): ours with the AK already parsed
   (the verifier keeps it); ours cold (TPM2B_PUBLIC parsed and the key loaded per call);
   Keylime's ``checkquote`` (takes the AK as PEM, which it loads per call: that is its API);
   Keylime's verifier path (``Tpm._tpm2_checkquote``: TPM2B_PUBLIC → PEM, decode the
   ``r…:…:…`` string, checkquote), mirrored here line for line because importing
   ``keylime.tpm.tpm_main`` needs the ``gpg`` bindings; and the bare ``verify`` floor.
4. Goals: Keylime checkquote / ours (AK parsed) ≥ 4; ours (AK parsed) / bare verify ≤ 1.3.
   When the second is missed, ``--profile`` shows where our time goes (cProfile).
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import logging
import pstats
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from benchlib import Stats, interleaved, print_machine
from cryptography.hazmat.primitives import serialization
from quote_sources import (
    PREVIOUS_CLOCK,
    REQUESTED,
    QuoteCase,
    bare_verify,
    make_case,
    simulated_cases,
    swtpm_cases,
)

from attest.core.errors import AttestationError
from attest.core.quote import QuoteAppraisal, QuoteSignatureInvalid, appraise_quote
from attest.core.tpm_structs import parse_tpm2b_public

logging.disable(logging.CRITICAL)  # keylime.config warns about its missing /etc files
from keylime.tpm import tpm2_objects  # noqa: E402
from keylime.tpm.tpm_util import checkquote  # noqa: E402


def ours(c: QuoteCase) -> QuoteAppraisal:
    return appraise_quote(c.ak, c.attest, c.signature, expected_nonce=c.nonce,
                          pcr_values=c.pcr_values, requested=REQUESTED,
                          previous_clock=PREVIOUS_CLOCK)


def ours_cold(c: QuoteCase) -> QuoteAppraisal:
    return appraise_quote(parse_tpm2b_public(c.ak_tpm2b), c.attest, c.signature,
                          expected_nonce=c.nonce, pcr_values=c.pcr_values,
                          requested=REQUESTED, previous_clock=PREVIOUS_CLOCK)


def keylime(c: QuoteCase) -> dict[int, str]:
    result: dict[int, str] = checkquote(c.ak_pem, c.nonce_str, c.signature, c.attest,
                                        c.pcrblob, "sha256")
    return result


def keylime_verifier_path(c: QuoteCase) -> dict[int, str]:
    """keylime.tpm.tpm_main.Tpm._tpm2_checkquote + _get_quote_parameters (7.14.3), uncompressed."""
    pem = tpm2_objects.pubkey_from_tpm2b_public(base64.b64decode(c.ak_b64)).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    quote = c.quote_str
    if quote[0] != "r":
        raise ValueError(f"Invalid quote type {quote[0]}")
    tokens = quote[1:].split(":")
    if len(tokens) < 3:
        raise ValueError("Quote is not compound!")
    quoteblob, sigblob, pcrblob = (base64.b64decode(t) for t in tokens[:3])
    result: dict[int, str] = checkquote(pem, c.nonce_str, sigblob, quoteblob, pcrblob, "sha256")
    return result


IMPLS: dict[str, Callable[[QuoteCase], object]] = {
    "ours (AK parsed)": ours,
    "ours cold (from TPM2B_PUBLIC)": ours_cold,
    "Keylime checkquote (PEM)": keylime,
    "Keylime verifier path (TPM2B b64 + r-string)": keylime_verifier_path,
    "bare verify (key loaded, DER ready)": bare_verify,
}


# -- agreement ----------------------------------------------------------------------------------

def _flip(data: bytes, index: int) -> bytes:
    b = bytearray(data)
    b[index] ^= 0x01
    return bytes(b)


def _tampered(c: QuoteCase) -> dict[str, tuple[QuoteCase, str]]:
    """Tampered variants and the check ours must name for each."""
    bank, pcrs = next(iter(c.pcr_values.items()))
    pcr = max(pcrs)
    bad_values = {bank: {**pcrs, pcr: _flip(pcrs[pcr], 0)}}

    def rebuild(attest: bytes = c.attest, signature: bytes = c.signature,
                values: dict[str, dict[int, bytes]] = c.pcr_values) -> QuoteCase:
        return make_case(c.source, c.ak_tpm2b, attest, signature, c.nonce_str, values)

    wrong_nonce = ("X" if c.nonce_str[0] != "X" else "Y") + c.nonce_str[1:]
    return {
        "signature bit flipped": (rebuild(signature=_flip(c.signature, len(c.signature) - 1)),
                                  QuoteSignatureInvalid.check),
        "TPMS_ATTEST pcrDigest flipped": (rebuild(attest=_flip(c.attest, len(c.attest) - 1)),
                                          QuoteSignatureInvalid.check),
        "wrong nonce": (replace(rebuild(), nonce=wrong_nonce.encode(), nonce_str=wrong_nonce),
                        "quote.nonce"),
        "PCR value tampered": (rebuild(values=bad_values), "quote.pcr_digest"),
    }


def _our_checks(c: QuoteCase) -> list[str]:
    try:
        return [f.check for f in ours(c).failures]
    except AttestationError as exc:
        return [exc.check]


def _keylime_rejects(fn: Callable[[QuoteCase], object], c: QuoteCase) -> bool:
    try:
        fn(c)
    except Exception:
        return True
    return False


def check_agreement(cases: list[QuoteCase]) -> list[str]:
    lines: list[str] = []
    for c in cases:
        if _our_checks(c) or _our_checks(replace(c, ak=parse_tpm2b_public(c.ak_tpm2b))):
            raise SystemExit(f"ours rejects a valid {c.source} quote: {_our_checks(c)}")
        expected = {i: v.hex() for i, v in c.pcr_values["sha256"].items()}
        if keylime(c) != expected or keylime_verifier_path(c) != expected:
            raise SystemExit(f"Keylime does not accept a valid {c.source} quote as ours does")
    sources = sorted({c.source for c in cases})
    lines.append(f"accepted by both: all {len(cases)} valid quotes ({', '.join(sources)}); "
                 f"Keylime's PCR dict == ours for each")
    for source in sources:
        c = next(c for c in cases if c.source == source)
        for what, (bad, check) in _tampered(c).items():
            got = _our_checks(bad)
            k1, k2 = _keylime_rejects(keylime, bad), _keylime_rejects(keylime_verifier_path, bad)
            if got != [check] or not (k1 and k2):
                raise SystemExit(f"{source} / {what}: ours {got} (want [{check}]), "
                                 f"Keylime rejects: {k1}/{k2}")
            lines.append(f"rejected by both: {source}, {what} (ours: {check})")
    return lines


# -- report -------------------------------------------------------------------------------------

def table(source: str, stats: dict[str, Stats]) -> None:
    base = stats["ours (AK parsed)"].median_us
    print(f"\n### {source}\n")
    print("| implementation | median µs | p10 µs | p90 µs | min µs | × ours (AK parsed) |")
    print("|---|---:|---:|---:|---:|---:|")
    for s in stats.values():
        print(f"| {s.name} | {s.median_us:.1f} | {s.p10_us:.1f} | {s.p90_us:.1f} | "
              f"{s.min_us:.1f} | {s.median_us / base:.2f} |")
    o, oc = stats["ours (AK parsed)"], stats["ours cold (from TPM2B_PUBLIC)"]
    k = stats["Keylime checkquote (PEM)"]
    kv = stats["Keylime verifier path (TPM2B b64 + r-string)"]
    bare = stats["bare verify (key loaded, DER ready)"]
    speedup, overhead = k.median_us / o.median_us, o.median_us / bare.median_us
    print(f"\n- Keylime checkquote / ours (AK parsed): **{speedup:.2f}×** (goal ≥ 4: "
          f"{'met' if speedup >= 4 else 'MISSED'})")
    print(f"- Keylime verifier path / ours cold: {kv.median_us / oc.median_us:.2f}×")
    print(f"- ours (AK parsed) / bare verify: **{overhead:.2f}×** (goal ≤ 1.3: "
          f"{'met' if overhead <= 1.3 else 'MISSED'} on medians); absolute overhead "
          f"{o.median_us - bare.median_us:.1f} µs; ratio of the minima "
          f"{o.min_us / bare.min_us:.2f}×, of Keylime/ours minima {k.min_us / o.min_us:.2f}×")
    print(f"- Keylime checkquote / bare verify: {k.median_us / bare.median_us:.2f}× — the "
          f"largest speed-up any checker without Keylime's overhead could show")


def tpm2_checkquote_table(wd: Path, nonce: bytes, runs: int) -> None:
    """tpm2_checkquote as a subprocess on the tpm2-tools quote: the pre-Python way to check."""
    def run(nonce_hex: str) -> int:
        return subprocess.run(
            ["tpm2_checkquote", "-u", "ak.pub", "-m", "quote.msg", "-s", "quote.sig", "-f",
             "quote.pcrs", "-g", "sha256", "-q", nonce_hex], cwd=wd,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode

    if run(nonce.hex()) != 0 or run(_flip(nonce, 0).hex()) == 0:
        raise SystemExit("tpm2_checkquote does not accept the valid / reject the wrong nonce")
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        run(nonce.hex())
        samples.append(time.perf_counter_ns() - t0)
    s = Stats.of("tpm2_checkquote subprocess", samples)
    print(f"\n### tpm2-tools-ecc: `tpm2_checkquote` as a subprocess ({runs} runs; accepts the "
          f"valid quote, rejects a wrong nonce)\n")
    print("| implementation | median µs | p10 µs | p90 µs | min µs |\n|---|---:|---:|---:|---:|")
    print(f"| {s.name} | {s.median_us:.0f} | {s.p10_us:.0f} | {s.p90_us:.0f} | "
          f"{s.min_us:.0f} |")


def _both(a: Callable[[], None], b: Callable[[], None]) -> None:
    a()
    b()


def breakdown(cases: list[QuoteCase], blocks: int, per_block: int) -> None:
    """Each step of appraise_quote alone, interleaved with the whole and the bare verify
    exactly like the main tables, so that the steps add up under the same load."""
    from attest.core import quote as q
    from attest.core.tpm_structs import parse_tpms_attest, parse_tpmt_signature, verify_signature

    parsed = {id(c): parse_tpms_attest(c.attest) for c in cases}
    sigs = {id(c): parse_tpmt_signature(c.signature) for c in cases}
    infos = {id(c): q.check_type(p) for c, p in zip(cases, parsed.values(), strict=True)}

    def pcr_checks(c: QuoteCase) -> None:
        q.check_pcr_values(infos[id(c)], c.pcr_values)
        q.check_pcr_digest(infos[id(c)], c.pcr_values, 0xB)

    steps: dict[str, Callable[[QuoteCase], object]] = {
        "appraise_quote (whole, AK parsed)": ours,
        "bare verify (key loaded, DER ready)": bare_verify,
        "parse_tpms_attest": lambda c: parse_tpms_attest(c.attest),
        "parse_tpmt_signature": lambda c: parse_tpmt_signature(c.signature),
        "verify_signature (rules + DER + verify)":
            lambda c: verify_signature(c.ak, sigs[id(c)], c.attest),
        "check_nonce": lambda c: q.check_nonce(parsed[id(c)], c.nonce),
        "check_pcr_values + check_pcr_digest": pcr_checks,
        "check_selection": lambda c: q.check_selection(infos[id(c)], REQUESTED),
        "check_clock": lambda c: q.check_clock(parsed[id(c)].clock_info, PREVIOUS_CLOCK),
    }
    fused = getattr(q, "_check_pcrs", None)
    if fused is not None:
        steps["_check_pcrs (fused fast path of the two PCR checks)"] = \
            lambda c: fused(infos[id(c)], c.pcr_values, 0xB)
    stats = interleaved(steps, cases, blocks=blocks, per_block=per_block, warmup=100)
    print(f"\n### Step breakdown of ours ({cases[0].source}; interleaved, {blocks} × "
          f"{per_block} calls each)\n")
    print("| step | median µs | min µs |\n|---|---:|---:|")
    for st in stats.values():
        print(f"| {st.name} | {st.median_us:.1f} | {st.min_us:.1f} |")


def profile(cases: list[QuoteCase], calls: int) -> None:
    prof = cProfile.Profile()
    prof.enable()
    for i in range(calls):
        ours(cases[i % len(cases)])
    prof.disable()
    print(f"\n### cProfile of ours (AK parsed), {calls} calls, sorted by own time\n\n```")
    pstats.Stats(prof, stream=sys.stdout).strip_dirs().sort_stats("tottime").print_stats(14)
    print("```")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=30)
    ap.add_argument("--per-block", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--sim-quotes", type=int, default=64)
    ap.add_argument("--swtpm-quotes", type=int, default=16, help="per AK kind")
    ap.add_argument("--no-swtpm", action="store_true")
    ap.add_argument("--profile", action="store_true", help="cProfile ours afterwards")
    ap.add_argument("--subprocess-runs", type=int, default=50,
                    help="runs of the tpm2_checkquote subprocess")
    args = ap.parse_args()

    print_machine()
    cases = simulated_cases(args.sim_quotes)
    if not args.no_swtpm:
        more, oracle_line, tools_dir = swtpm_cases(args.swtpm_quotes)
        cases += more
        print(f"# {oracle_line}")
    print("\n## Agreement (checked before timing)\n")
    for line in check_agreement(cases):
        print(f"- {line}")
    print(f"\n## Per-quote times ({args.blocks} interleaved blocks × {args.per_block} calls "
          f"per implementation, {args.warmup} warm-up calls)")
    for source in ("sim-ecc", "swtpm-ecc", "swtpm-rsa"):
        subset = [c for c in cases if c.source == source]
        if subset:
            table(source, interleaved(IMPLS, subset, blocks=args.blocks,
                                      per_block=args.per_block, warmup=args.warmup))
    if not args.no_swtpm:
        oracle = next(c for c in cases if c.source == "tpm2-tools-ecc")
        tpm2_checkquote_table(tools_dir, oracle.nonce, args.subprocess_runs)
        shutil.rmtree(tools_dir.parent, ignore_errors=True)  # swtpm state, CA, tpm2-tools files
    if args.profile:
        breakdown([c for c in cases if c.source == "sim-ecc"], args.blocks, args.per_block)
        profile([c for c in cases if c.source == "sim-ecc"], 20000)


if __name__ == "__main__":
    main()
