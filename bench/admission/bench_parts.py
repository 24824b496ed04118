"""Where the webhook's time and memory go, part by part (in-process, no HTTP).

Run by hand from the repository root::

    .venv/bin/python bench/admission/bench_parts.py

1. **Rego decision** (``admission.service.rego.RegoEvaluator.decide``, what ``/validate``
   calls inline on the event loop): a fresh input (new digest, so the memo misses: every cold
   review), the same input again (memo hit: the warm path), and a fresh input against a
   one-line policy (what regopy costs per query whatever the policy: the rest is
   ``policies/admission.rego``'s rules).
2. **SQL record** (``SqlAdmissionRecords.record`` on SQLite with the project's pragmas via
   ``umec.db.open_database``: WAL, synchronous=NORMAL): one new pod UID per call, as for every
   admitted Pod; and the ``asyncio.to_thread`` hop ``/validate`` wraps it in.
3. **Registry round trips of a cold review** against a real docker-registry (2.8, no referrers
   API): every request the webhook's two calls make (``RegistryResolver.resolve`` for
   ``/mutate``, ``CosignVerifier.verify`` = ``verify_image_signatures`` for ``/validate``),
   counted by a transport wrapper, and the verification timed with and without the bundle
   referrers lookup (``bundles=False``).
4. **Memory**: a fresh interpreter imports the webhook's layers one after another and builds
   the app as ``umec webhook`` does (``build_webhook``); VmRSS after each step, and the largest
   top-level packages left in ``sys.modules``.

Timings: per call ``perf_counter_ns``, interleaved blocks, p50/p90/min (benchlib).
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]

from benchlib import LATENCY_HEADER, Latency, print_machine  # noqa: E402
from setup_env import push_and_sign, registry, write_key_and_policy  # noqa: E402

from admission.core.reference import parse_reference  # noqa: E402
from admission.registry.client import RegistryClient  # noqa: E402
from admission.service.records import AdmittedImage, SqlAdmissionRecords  # noqa: E402
from admission.service.rego import RegoEvaluator  # noqa: E402
from admission.signing.verify import verify_image_signatures  # noqa: E402
from umec.db import open_database  # noqa: E402


def rego_input(digest: str) -> dict[str, Any]:
    """What ``admission.core.rego_input`` builds for a one-container Pod that is verified."""
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


TRIVIAL_REGO = """package umec.admission
decision := {"allowed": true, "deny": [], "warnings": []}
"""


def bench_rego(n: int, work: Path) -> list[Latency]:
    rego = RegoEvaluator()
    # regopy's fixed cost per query (set_input, evaluation, JSON out) with a one-line policy
    (work / "trivial.rego").write_text(TRIVIAL_REGO)
    trivial = RegoEvaluator([work / "trivial.rego"])
    fresh = [rego_input("sha256:" + uuid.uuid4().hex * 2) for _ in range(2 * n + 80)]
    same = rego_input("sha256:" + "ab" * 32)

    def miss_trivial(i: int) -> None:
        trivial.decide(fresh[n + 40 + i])

    def miss(i: int) -> None:
        if not rego.decide(fresh[i]).allowed:
            raise RuntimeError("Rego denied a verified pod")

    def hit(_i: int) -> None:
        rego.decide(same)
    return [Latency.of("Rego decide, fresh input (cold review)", timed(miss, n)),
            Latency.of("Rego decide, fresh input, one-line policy (regopy's fixed cost)",
                       timed(miss_trivial, n)),
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


class CountingTransport(httpx.AsyncBaseTransport):
    """Every request the registry client sends, as ``METHOD /v2/<shape>`` (digests elided)."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.seen: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = re.sub(r"sha256[:-][0-9a-f]{64}", "<digest>", request.url.path)
        self.seen.append(f"{request.method} {re.sub(r'/v2/[^/]+/[^/]+/', '/v2/<repo>/', path)}")
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _registry_parts(host: str, prefix: str, work: Path, n: int
                          ) -> tuple[list[Latency], dict[str, list[str]]]:
    key = write_key_and_policy(work, host, prefix)
    keys = {"ci": key.public_key()}
    images = await push_and_sign(host, prefix, key, 2 * n + 1)
    counting = CountingTransport()
    shapes: dict[str, list[str]] = {}
    resolve_ns: list[int] = []
    with_b: list[int] = []
    without_b: list[int] = []
    async with RegistryClient(transport=counting) as client:
        for i, image in enumerate(images):
            ref = parse_reference(image.pinned)
            counting.seen.clear()
            t0 = time.perf_counter_ns()
            if (await client.resolve(parse_reference(image.tag_ref))).digest != image.digest:
                raise RuntimeError("resolve returned another digest")
            t1 = time.perf_counter_ns()
            resolve_seen = list(counting.seen)
            counting.seen.clear()
            bundles = i % 2 == 0  # interleaved: fresh digests for both variants
            t2 = time.perf_counter_ns()
            signers, _ = await verify_image_signatures(client, ref, keys, bundles=bundles)
            t3 = time.perf_counter_ns()
            if [s.key_id for s in signers] != ["ci"]:
                raise RuntimeError(f"verification found {signers}")
            if i == 0:  # the first image also opens the connection: keep its requests only
                shapes = {"resolve (/mutate)": resolve_seen,
                          "verify_image_signatures (/validate)": list(counting.seen)}
                continue
            resolve_ns.append(t1 - t0)
            (with_b if bundles else without_b).append(t3 - t2)
    return ([Latency.of("registry resolve of a new tag (in process)", resolve_ns),
             Latency.of("verify_image_signatures, new digest (as the webhook)", with_b),
             Latency.of("verify_image_signatures, bundles=False", without_b)], shapes)


def bench_registry(n: int, work: Path) -> tuple[list[Latency], dict[str, list[str]]]:
    with registry(work) as reg:
        return asyncio.run(_registry_parts(reg.host, f"parts-{uuid.uuid4().hex[:6]}", work, n))


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
    ("+ admission.service.webhook, core, registry, verification",
     "import admission.service.webhook, admission.registry.client, admission.signing.verify"),
    ("+ regopy module", "import regopy"),
    ("+ alembic (umec.db imports it at module level)", "import alembic.context, alembic.command"),
    ("+ umec.webhook_process, admission.service.build, umec.settings, umec.db",
     "import umec.webhook_process, admission.service.build, umec.settings, umec.db"),
    ("+ build_webhook(Settings) (Rego interpreter, DB engine, policies)",
     "from umec.webhook_process import build_webhook\nfrom umec.settings import Settings\n"
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
        rows = bench_rego(n, Path(tmp)) + bench_record(n, Path(tmp))
        reg_rows, shapes = bench_registry(100, Path(tmp))
    print("\n## Parts of a review, in process\n")
    print(LATENCY_HEADER)
    for row in rows + reg_rows:
        print(row.row())
    print("\nRegistry requests of one cold review (docker-registry 2.8):\n")
    for call, seen in shapes.items():
        print(f"- {call}: {len(seen)} requests: " + ", ".join(f"`{r}`" for r in seen))
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
