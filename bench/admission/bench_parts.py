"""Where the webhook's time and memory go, part by part (in-process, no HTTP).

Run by hand from the repository root::

    .venv/bin/python bench/admission/bench_parts.py

1. **Rego decision** (``admission.rego.RegoEvaluator.decide``, what ``/validate`` calls inline
   on the event loop): a fresh input (new digest, so the memo misses: every cold review) and
   the same input again (memo hit: the warm path).
2. **SQL record** (``SqlAdmissionRecords.record`` on SQLite with the project's pragmas via
   ``umec.db.open_database``: WAL, synchronous=NORMAL): one new pod UID per call, as for every
   admitted Pod; and the ``asyncio.to_thread`` hop ``/validate`` wraps it in.
3. **Memory**: a fresh interpreter imports the webhook's layers one after another and builds
   the app as ``umec webhook`` does (``build_webhook``); VmRSS after each step, and the largest
   top-level packages left in ``sys.modules``.

Timings: per call ``perf_counter_ns``, interleaved blocks, p50/p90/min (benchlib).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]

from benchlib import LATENCY_HEADER, Latency, print_machine  # noqa: E402

from admission.records import AdmittedImage, SqlAdmissionRecords  # noqa: E402
from admission.rego import RegoEvaluator  # noqa: E402
from umec.db import open_database  # noqa: E402


def rego_input(digest: str) -> dict[str, Any]:
    """The shape ``Admitter._rego_input`` builds for a one-container Pod that is verified."""
    image = f"127.0.0.1:5000/bench/app@{digest}"
    return {"namespace": "tenant-a", "kind": "Pod", "operation": "CREATE", "containers": [{
        "path": "spec.containers[0]", "image": image, "digest": digest, "error": None,
        "policies": [{"policy": "bench-ci-signed", "mode": "enforce", "satisfied": True,
                      "reason": "", "signers": ["ci"]}], "no_match": None}]}


def timed(fn: Callable[[int], object], n: int, warmup: int = 20) -> list[int]:
    for i in range(warmup):
        fn(-1 - i)
    out = []
    for i in range(n):
        t0 = time.perf_counter_ns()
        fn(i)
        out.append(time.perf_counter_ns() - t0)
    return out


def bench_rego(n: int) -> list[Latency]:
    rego = RegoEvaluator()
    fresh = [rego_input("sha256:" + uuid.uuid4().hex * 2) for _ in range(n + 40)]
    same = rego_input("sha256:" + "ab" * 32)

    def miss(i: int) -> None:
        if not rego.decide(fresh[i]).allowed:
            raise RuntimeError("Rego denied a verified pod")

    def hit(_i: int) -> None:
        rego.decide(same)
    return [Latency.of("Rego decide, fresh input (cold review)", timed(miss, n)),
            Latency.of("Rego decide, memo hit (warm review)", timed(hit, n))]


def bench_record(n: int, work: Path) -> list[Latency]:
    _, sessions = open_database(f"sqlite:///{work / 'parts.db'}")
    records = SqlAdmissionRecords(sessions)
    image = AdmittedImage("spec.containers[0]", "127.0.0.1:5000/bench/app@sha256:" + "ab" * 32,
                          "sha256:" + "ab" * 32, ("ci",))

    def record(_i: int) -> None:
        records.record(namespace="tenant-a", name="app", uid=str(uuid.uuid4()), images=[image],
                       verified=True, policy_generation="g1")

    async def hop_all() -> list[int]:
        out = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            await asyncio.to_thread(record, 0)
            out.append(time.perf_counter_ns() - t0)
        return out
    direct = timed(record, n)
    return [Latency.of("SQL record (new pod UID), direct", direct),
            Latency.of("SQL record via asyncio.to_thread", asyncio.run(hop_all()))]


MEMORY_SCRIPT = r"""
import json, sys, os
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
out = [("python interpreter", rss())]
for label, stmt in STEPS:
    exec(stmt)
    out.append((label, rss()))
pkgs = {}
for name, mod in list(sys.modules.items()):
    pkgs.setdefault(name.split(".")[0], 0)
    pkgs[name.split(".")[0]] += 1
print(json.dumps({"steps": out, "modules": len(sys.modules),
                  "packages": sorted(pkgs.items(), key=lambda kv: -kv[1])[:25]}))
"""

STEPS = [
    ("+ fastapi, uvicorn (server stack)", "import fastapi, uvicorn, starlette"),
    ("+ sqlalchemy", "import sqlalchemy, sqlalchemy.orm"),
    ("+ httpx", "import httpx"),
    ("+ cryptography (x509, ec, rsa)",
     "from cryptography import x509\n"
     "from cryptography.hazmat.primitives.asymmetric import ec, rsa"),
    ("+ admission.webhook, core, registry, verification",
     "import admission.webhook, admission.registry, admission.verification"),
    ("+ regopy module", "import regopy"),
    ("+ umec.admission_wiring, umec.settings, umec.db",
     "import umec.admission_wiring, umec.settings, umec.db"),
    ("+ build_webhook(Settings) (Rego interpreter, DB engine, policies)",
     "from umec.admission_wiring import build_webhook\nfrom umec.settings import Settings\n"
     "import tempfile, pathlib\nd = pathlib.Path(tempfile.mkdtemp())\n"
     "app, deps = build_webhook(Settings(data_dir=d))"),
]


def bench_memory() -> dict[str, Any]:
    script = f"STEPS = {STEPS!r}\n{MEMORY_SCRIPT}"
    done = subprocess.run([sys.executable, "-c", script], cwd=str(HERE.parents[1]),
                          capture_output=True, text=True, timeout=120, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    print_machine()
    n = 300
    with tempfile.TemporaryDirectory() as tmp:
        rows = bench_rego(n) + bench_record(n, Path(tmp))
    print("\n## Parts of a review, in process\n")
    print(LATENCY_HEADER)
    for row in rows:
        print(row.row())
    mem = bench_memory()
    print("\n## Webhook memory by import step (fresh interpreter, VmRSS)\n")
    print("| step | VmRSS MiB | added MiB |\n|---|---|---|")
    prev = 0.0
    for label, rss in mem["steps"]:
        print(f"| {label} | {rss:.1f} | {rss - prev:+.1f} |")
        prev = rss
    print(f"\n{mem['modules']} modules loaded; most modules per top-level package: "
          + ", ".join(f"{p} {c}" for p, c in mem["packages"]))


if __name__ == "__main__":
    main()
