"""Benchmark (issue 13): IMA list appraisal, µMEC against Keylime's own IMA code.

Run from the repo root::

    .venv/bin/python bench/attest/bench_ima.py                 # µMEC only
    bench/.venv-keylime/bin/python bench/attest/bench_ima.py   # side by side with Keylime
                                                               # (bench/attest/setup_keylime.sh)

The list: a boot_aggregate then ``--entries`` (10,000) ima-ng entries with sha256 file digests,
all allowed by a Keylime runtime policy that lists every path (plus an exclude pattern), as
``keylime-policy create runtime`` would make it. Two cases, each parse + replay into PCR 10
(sha1 bank, Keylime's default) + appraisal, checked against the quoted PCR value:

* full: the whole list from offset 0;
* incremental: ``--new`` (100) entries after the 10,000 already accepted, replayed from the
  stored running PCR value (Keylime: ``AgentAttestState`` with ``next_ima_ml_entry``).

Keylime parses the ASCII list (what its agent sends); µMEC is timed on the same ASCII list and
on the binary one its agent sends. Per-call medians over interleaved blocks (benchlib).
``floor`` is the part no implementation avoids: one SHA-1 of each entry's template data (the
template-hash check) and one SHA-1 PCR extend per entry, over entries already split.
Goals (issue 13): ≥ 3× Keylime on the full list, ≤ 1 ms per 100 incremental entries.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import logging
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import Stats, interleaved, print_machine

from attest.core.ima.appraise import ImaState, appraise_ima
from attest.core.ima.encode import make_entry, to_ascii, to_binary
from attest.core.ima.parse import ImaEntry, parse_list
from attest.core.ima.policy import RuntimePolicy, appraise_entries, keylime_policy
from attest.core.ima.replay import initial_pcr, replay_to_quote, template_digest
from attest.core.tpm_structs import ClockInfo

CLOCK = ClockInfo(clock=1, reset_count=1, restart_count=0, safe=True)


def build(count: int) -> list[ImaEntry]:
    entries = [make_entry("boot_aggregate", hashlib.sha256(b"boot").digest())]
    entries += [make_entry(f"/usr/lib/pkg{i // 100}/file{i}.so",
                           hashlib.sha256(b"%d" % i).digest()) for i in range(count)]
    return entries


def pcr10(entries: list[ImaEntry], start: bytes = bytes(20)) -> bytes:
    value = start
    for e in entries:
        value = hashlib.sha1(value + template_digest(e, "sha1")).digest()
    return value


def umec_impls(doc: dict[str, Any], entries: list[ImaEntry],
               new: list[ImaEntry]) -> dict[str, Callable[[int], object]]:
    policy = RuntimePolicy.from_dict(doc)
    everything = entries + new
    full_pcr = {"sha1": {10: pcr10(entries)}}
    inc_pcr = {"sha1": {10: pcr10(everything)}}
    state = ImaState(len(entries), {"sha1": pcr10(entries)}, 1, 0)
    lists = {fmt: (b"".join(enc(e) for e in entries), b"".join(enc(e) for e in new))
             for fmt, enc in (("ascii", to_ascii), ("binary", to_binary))}

    def run(raw: bytes, offset: int, pcrs: dict[str, dict[int, bytes]],
            previous: ImaState | None, accepted: int) -> None:
        out = appraise_ima(policy, raw, offset, pcrs, CLOCK, previous)
        if out.failures or out.state is None or out.state.accepted != accepted:
            raise SystemExit(f"µMEC appraisal failed: {out.failures[:1]}")

    impls: dict[str, Callable[[int], object]] = {}
    for fmt, (full, inc) in lists.items():
        impls[f"umec-{fmt}-full"] = lambda _i, full=full: run(full, 0, full_pcr, None,
                                                              len(entries))
        impls[f"umec-{fmt}-incr"] = lambda _i, inc=inc: run(inc, len(entries), inc_pcr, state,
                                                            len(everything))
    impls["floor-full"] = lambda _i: _floor(entries)
    impls["floor-incr"] = lambda _i: _floor(new)
    return impls


def _floor(entries: list[ImaEntry]) -> bytes:
    """What no implementation avoids: per entry, SHA-1 of its template data (the template hash
    check) and one PCR 10 extend; entries already split, no parse, no appraisal."""
    sha1, value = hashlib.sha1, bytes(20)
    for e in entries:
        thash = sha1(e.data).digest()
        value = sha1(value + thash).digest()
    return value


def steps(doc: dict[str, Any], entries: list[ImaEntry]) -> None:
    """``--steps``: µMEC's full-list time split into parse (+ template-hash checks), replay and
    appraisal, each timed alone on the same list."""
    policy = RuntimePolicy.from_dict(doc)
    quoted = {"sha1": pcr10(entries)}
    for fmt, enc in (("ascii", to_ascii), ("binary", to_binary)):
        raw = b"".join(enc(e) for e in entries)
        parsed = parse_list(raw)
        impls: dict[str, Callable[[int], object]] = {
            f"{fmt}-parse": lambda _i, raw=raw: parse_list(raw),
            f"{fmt}-replay": lambda _i, parsed=parsed: replay_to_quote(
                parsed, initial_pcr(["sha1"]), quoted),
            f"{fmt}-appraise": lambda _i, parsed=parsed: appraise_entries(policy, parsed)}
        for name, st in interleaved(impls, [0], blocks=10, per_block=3, warmup=2).items():
            print(f"# step {name:16} median {st.median_us / 1e3:7.2f} ms, "
                  f"min {st.min_us / 1e3:7.2f} ms")


def keylime_impls(doc: dict[str, Any], entries: list[ImaEntry],
                  new: list[ImaEntry]) -> dict[str, Callable[[int], object]]:
    # keylime.ima imports keylime.signing, which imports the gpg bindings (Debian's
    # python3-gpg, not on PyPI) for signed policies only; nothing timed here reaches them.
    sys.modules.setdefault("gpg", types.ModuleType("gpg"))
    try:
        from keylime.agentstates import AgentAttestState
        from keylime.common.algorithms import Hash
        from keylime.ima import ima
    except ImportError as exc:
        print(f"# Keylime not importable ({exc}): run bench/attest/setup_keylime.sh and this "
              "script with bench/.venv-keylime/bin/python", file=sys.stderr)
        return {}
    logging.getLogger("keylime").setLevel(logging.CRITICAL)
    lines = [to_ascii(e).decode() for e in entries]
    new_lines = [to_ascii(e).decode() for e in new]
    full_pcr, inc_pcr = pcr10(entries).hex(), pcr10(entries + new).hex()
    after = pcr10(entries)

    def full(_i: int) -> None:
        _, failure = ima.process_measurement_list(
            AgentAttestState("bench"), lines, copy.deepcopy(doc), pcrval=full_pcr,
            hash_alg=Hash.SHA1)
        if failure:
            raise SystemExit(f"Keylime appraisal failed: {failure.get_event_ids()[:3]}")

    def incremental(_i: int) -> None:
        state = AgentAttestState("bench")
        state.update_ima_attestation(10, after, len(lines))
        _, failure = ima.process_measurement_list(state, new_lines, doc, pcrval=inc_pcr,
                                                  hash_alg=Hash.SHA1)
        if failure:
            raise SystemExit(f"Keylime appraisal failed: {failure.get_event_ids()[:3]}")

    return {"keylime-ascii-full": full, "keylime-ascii-incr": incremental}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--new", type=int, default=100)
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--per-block", type=int, default=4)
    parser.add_argument("--steps", action="store_true",
                        help="only split µMEC's full-list time into parse, replay, appraisal")
    args = parser.parse_args()
    everything = build(args.entries + args.new)
    entries, new = everything[:args.entries + 1], everything[args.entries + 1:]
    doc = keylime_policy({e.path: [e.digest.hex()] for e in everything},
                         excludes=["/var/log/.*", "/tmp/.*"])
    if args.steps:
        print_machine()
        steps(doc, entries)
        return
    impls = {**umec_impls(doc, entries, new), **keylime_impls(doc, entries, new)}
    print_machine()
    print(f"# {len(entries)} entries full, {len(new)} incremental; sha1 PCR 10 bank")
    results: dict[str, Stats] = {}
    for case in ("full", "incr"):
        chosen = {k: v for k, v in impls.items() if k.endswith(case)}
        per_block = args.per_block if case == "full" else args.per_block * 50
        results.update(interleaved(chosen, [0], blocks=args.blocks, per_block=per_block,
                                   warmup=2))
    print(f"{'implementation':22} {'n':>5} {'median ms':>10} {'p10 ms':>9} {'p90 ms':>9} "
          f"{'min ms':>9}")
    for name, s in results.items():
        print(f"{name:22} {s.n:5} {s.median_us / 1e3:10.3f} {s.p10_us / 1e3:9.3f} "
              f"{s.p90_us / 1e3:9.3f} {s.min_us / 1e3:9.3f}")
    for case in ("full", "incr"):
        kl = results.get(f"keylime-ascii-{case}")
        if kl is not None:
            for fmt in ("ascii", "binary"):
                ours = results[f"umec-{fmt}-{case}"]
                print(f"# {case}: Keylime / µMEC-{fmt} = {kl.median_us / ours.median_us:.1f}× "
                      f"(medians), {kl.min_us / ours.min_us:.1f}× (minima)")


if __name__ == "__main__":
    main()
