"""Benchmark (issue 13, part 2): the cost of one k3s join grant, server side and node side.

Run from the repo root (needs swtpm, swtpm_setup, swtpm_localca and tpm2-pytss)::

    .venv/bin/python bench/attest/bench_join.py [--blocks 10 --per-block 10 --ek-kind ecc]

What is timed, interleaved (benchlib), over a pool of grants made once before timing:

* ``server-grant``: the server's work for one grant once the verdict and the Kubernetes Secret
  are in place (``JoinService.issue`` after ``_create_checked``): parse the node's stored EK and
  AK (TPM2B_PUBLIC), draw the 32-byte secret, TPM2_MakeCredential against the EK bound to the
  AK's Name (attest.core.credential), and seal the K10 token (attest.core.join_token: HKDF +
  AES-256-GCM). In-process, no I/O. The database rows and the apiserver's POST are not in it:
  they are the same round trips any verdict write or Secret create costs.
* ``node-activate-open``: the node's work for one grant (attest.join_agent.open_grant): base64,
  TPM2_ActivateCredential on a real swtpm through tpm2-pytss (the EK re-created from its
  template, a policy session, the AK loaded under the EK, ActivateCredential, flushes), then
  the token opened (HKDF + AES-GCM) and parsed.
* ``node-activate-only``: the TPM part of the above (``Tpm.activate_credential``), to show where
  the node's time goes.

Before timing, every grant of the pool is opened once and must give back its token; a grant
made for another node name must be refused (join.seal).
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import Stats, interleaved, print_machine

from attest.core.credential import make_credential
from attest.core.join_token import (
    SECRET_BYTES,
    JoinSealBroken,
    k3s_secure_token,
    new_bootstrap_token,
    seal_token,
    verdict_token_id,
)
from attest.core.tpm_structs import parse_tpm2b_public
from attest.join_agent import open_grant
from attest.tpm.device import Tpm
from attest.tpm.swtpm import Swtpm, SwtpmCa, swtpm_available

NODE = "pi-bench-1"
CA_SHA256 = "ab" * 32


def grant(ek_public: bytes, ak_public: bytes, token: str) -> dict[str, str]:
    """What JoinService.issue computes for one grant, as the join route returns it."""
    ek = parse_tpm2b_public(ek_public)
    ak_name = parse_tpm2b_public(ak_public).name()
    secret = os.urandom(SECRET_BYTES)
    blob, encrypted = make_credential(ek, ak_name, secret)
    sealed = seal_token(secret, NODE, token)
    return {"credential_blob": base64.b64encode(blob).decode(),
            "encrypted_secret": base64.b64encode(encrypted).decode(),
            "sealed_token": base64.b64encode(sealed).decode()}


def _token(i: int) -> str:
    from datetime import UTC, datetime

    tok = new_bootstrap_token(verdict_token_id(NODE, i.to_bytes(32, "big")),
                              datetime.now(UTC), 600)
    return k3s_secure_token(CA_SHA256, tok)


def check(tpm: Tpm, pool: list[tuple[dict[str, str], str]], ek: bytes, ak: bytes) -> None:
    for g, token in pool:
        if open_grant(tpm, NODE, g) != token:
            raise SystemExit("a grant did not open to its token")
    wrong = grant(ek, ak, _token(0))
    try:
        open_grant(tpm, "another-node", wrong)
    except JoinSealBroken:
        return
    raise SystemExit("a grant opened under another node's name")


def run(args: argparse.Namespace, work: Path) -> dict[str, Stats]:
    with Swtpm(work / "tpm", SwtpmCa(work / "ca")) as swtpm, \
            Tpm(swtpm.tcti, ek_kind=args.ek_kind) as tpm:
        ek = tpm.ek_public(args.ek_kind)
        ak = tpm.load_or_create_ak(work / "state", args.ek_kind).public
        pool = [(grant(ek, ak, tok), tok) for tok in map(_token, range(args.pool))]
        check(tpm, pool, ek, ak)
        print(f"# EK {args.ek_kind}, AK {args.ek_kind}; {len(pool)} grants checked (each opens "
              "to its token; another node name is refused join.seal)")

        def activate(item: tuple[dict[str, str], str]) -> object:
            g = item[0]
            return tpm.activate_credential(base64.b64decode(g["credential_blob"]),
                                           base64.b64decode(g["encrypted_secret"]))

        impls: dict[str, Callable[[tuple[dict[str, str], str]], object]] = {
            "server-grant": lambda item: grant(ek, ak, item[1]),
            "node-activate-open": lambda item: open_grant(tpm, NODE, item[0]),
            "node-activate-only": activate,
        }
        return interleaved(impls, pool, blocks=args.blocks, per_block=args.per_block, warmup=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--per-block", type=int, default=10)
    parser.add_argument("--pool", type=int, default=20, help="distinct grants, cycled")
    parser.add_argument("--ek-kind", choices=("ecc", "rsa"), default="ecc")
    args = parser.parse_args()
    if not swtpm_available():
        raise SystemExit("swtpm/swtpm_setup/swtpm_localca not on PATH")
    print_machine()
    with tempfile.TemporaryDirectory(prefix="bench-join-") as tmp:
        results = run(args, Path(tmp))
    print(f"{'step':22} {'n':>5} {'median ms':>10} {'p10 ms':>9} {'p90 ms':>9} {'min ms':>9}")
    for name, s in results.items():
        print(f"{name:22} {s.n:5} {s.median_us / 1e3:10.3f} {s.p10_us / 1e3:9.3f} "
              f"{s.p90_us / 1e3:9.3f} {s.min_us / 1e3:9.3f}")


if __name__ == "__main__":
    main()
