"""Benchmark: token issuance, guard overhead and revocation latency (issue 4).

Run from the repo root::

    .venv/bin/python bench/tokens/bench_tokens.py [--issuances 3000 --threads 4 --trials 40]

1. **Issuance over HTTP.** ``umec server`` runs as its own process (SQLite, like
   ``bench_rounds.py``) with a cluster JWKS file and a grants file. The benchmark attests
   ``--nodes`` simulated nodes, writes one admission record per pod into the server's database
   (the webhook's real SQL adapter) and mints projected service-account tokens with Kubernetes'
   claim layout. ``--threads`` clients then exchange them at ``/oauth2/token`` in a closed loop:
   every issuance runs every trust check (SA token signature, admission record, node state and
   freshness, Rego scopes, ES256 signing). Reported: issuances/s, p50/p99, and the server's CPU
   time per issuance (``/proc/PID/stat``), whose inverse × cores is the issuance capacity.
2. **Issuance core in-process.** ``TokenIssuer.issue`` on the same database, timed per call
   (no HTTP): the cost of the decision itself.
3. **Guard overhead.** One FastAPI route served twice in one app, unguarded and behind
   ``mec_api.deps.requires``, called in-process through ``httpx.ASGITransport`` in interleaved
   blocks; overhead = difference of medians. Also ``AccessTokenGuard.authenticate`` alone.
4. **Revocation latency.** Per trial, a fresh node is trusted, its pod gets a token and calls the
   sensor API; then its TPM's application PCR changes and it attests (untrusted). Measured:
   from the failed evidence's answer to the first refused call, polling every 5 ms, against
   (a) the APIs mounted in ``umec server`` and (b) ``umec api sensor`` as its own process that
   follows the revocation feed over HTTP.

Goals on 2 cores: ≥ 1,000 issuances/s; guard overhead ≤ 0.3 ms; revocation p99 ≤ 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench" / "attest"))
sys.path.insert(0, str(REPO))

from bench_rounds import cpu_seconds, server_process, wait_healthy  # noqa: E402
from benchlib import percentile, print_machine, vm_status  # noqa: E402

from admission.service.records import AdmittedImage, SqlAdmissionRecords  # noqa: E402
from tests.support.simagent import SimulatedNode  # noqa: E402
from tests.support.simtpm import SimulatedTpm  # noqa: E402
from umec.db import open_database  # noqa: E402
from umec.demo_tokens import DemoCluster  # noqa: E402
from umec.localserver import free_port  # noqa: E402

EXCHANGE = {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "scope": "sensor.read"}
GRANTS = "grants: [{namespaces: [tenant-*], scopes: [sensor.read, inference.classify]}]\n"


def coffee_jpeg() -> bytes:
    import cv2
    import numpy as np
    from skimage import data
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(np.asarray(data.coffee()), cv2.COLOR_RGB2BGR))
    assert ok
    return bytes(jpeg)


def inference_http(site: Site, subject: str, runs: int) -> list[float]:
    token = site.client.post("/oauth2/token", data={
        **EXCHANGE, "scope": "inference.classify", "subject_token": subject}).json()
    headers = {"Authorization": f"Bearer {token['access_token']}", "Content-Type": "image/jpeg"}
    image, out = coffee_jpeg(), []
    for i in range(runs + 10):
        t0 = time.perf_counter()
        r = site.client.post("/inference/v1/models/efficientnet-lite0/classify", content=image,
                             headers=headers)
        if i >= 10:
            out.append(time.perf_counter() - t0)
        if r.status_code != 200 or r.json()["predictions"][0]["label"] != "espresso":
            raise SystemExit(f"classification failed: {r.status_code} {r.text[:200]}")
    return out
DIGEST = "sha256:" + "ab" * 32


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (uvicorn workers), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def tree_cpu(pid: int) -> float:
    total = 0.0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(p)
    return total


def tree_hwm_mib(pid: int) -> str:
    return ", ".join(f"{vm_status(p)['VmHWM'] / 1024:.1f}" for p in process_tree(pid))


def stats_ms(values: list[float]) -> str:
    s = sorted(values)
    return (f"p50 {percentile(s, 50) * 1e3:.2f} ms, p90 {percentile(s, 90) * 1e3:.2f} ms, "
            f"p99 {percentile(s, 99) * 1e3:.2f} ms, max {s[-1] * 1e3:.2f} ms (n={len(s)})")


class Site:
    """Nodes, pods and their SA tokens against one server."""

    def __init__(self, base: str, db_url: str, cluster: DemoCluster) -> None:
        self.base, self.cluster = base, cluster
        self.records = SqlAdmissionRecords(open_database(db_url)[1])
        self.client = httpx.Client(base_url=base, timeout=30)

    def trusted_node(self, name: str, tpm: SimulatedTpm) -> SimulatedNode:
        node = SimulatedNode(name, self.client, tpm)
        node.enroll_and_activate()
        assert node.attest()["state"] == "trusted"
        return node

    def pod_token(self, node: str, pod: str) -> str:
        self.records.record(namespace="tenant-a", name=pod, uid=f"uid-{pod}",
                            images=[AdmittedImage("spec.containers[0]", f"r/a@{DIGEST}", DIGEST,
                                                  ("ci",))],
                            verified=True, policy_generation="bench")
        return self.cluster.pod_token("tenant-a", "app", pod, f"uid-{pod}", node)


def issuance_http(site: Site, subjects: list[str], threads: int, count: int,
                  pid: int) -> dict[str, Any]:
    latencies: list[float] = []
    lock = threading.Lock()
    errors: list[str] = []
    per = count // threads

    def worker(k: int) -> None:
        client = httpx.Client(base_url=site.base, timeout=30)
        mine: list[float] = []
        for i in range(per):
            t0 = time.perf_counter()
            r = client.post("/oauth2/token", data={**EXCHANGE,
                                                   "subject_token": subjects[(k + i * threads)
                                                                             % len(subjects)]})
            mine.append(time.perf_counter() - t0)
            if r.status_code != 200:
                errors.append(r.text[:200])
        with lock:
            latencies.extend(mine)
        client.close()

    for warm in subjects[:50]:  # warm-up: caches, connections, Rego memo
        site.client.post("/oauth2/token", data={**EXCHANGE, "subject_token": warm})
    cpu0, t0 = tree_cpu(pid), time.perf_counter()
    workers = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall, cpu = time.perf_counter() - t0, tree_cpu(pid) - cpu0
    if errors:
        raise SystemExit(f"{len(errors)} issuances refused, e.g. {errors[0]}")
    return {"n": len(latencies), "per_s": len(latencies) / wall, "lat": latencies,
            "cpu_ms": cpu / len(latencies) * 1e3}


WRK_SCRIPT = """
bodies = {%s}
i = 0
request = function()
  i = i %% #bodies + 1
  return wrk.format("POST", "/oauth2/token",
    {["Content-Type"] = "application/x-www-form-urlencoded"}, bodies[i])
end
done = function(summary, latency, requests)
  io.write(string.format("WRK %%d %%d %%d %%.3f %%.3f %%.3f\\n", summary.requests,
    summary.errors.status, summary.errors.timeout, latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, summary.duration / 1e6))
end
"""


def issuance_wrk(work: Path, base: str, subjects: list[str], connections: int,
                 seconds: int, pid: int) -> dict[str, float] | None:
    """The same exchanges from wrk (C, one thread): a load generator that leaves the server
    nearly all of the two cores."""
    if shutil.which("wrk") is None:
        return None
    bodies = ",".join('"' + "&".join(f"{k}={v}" for k, v in
                                     {**EXCHANGE, "subject_token": sub}.items()) + '"'
                      for sub in subjects)
    script = work / "exchange.lua"
    script.write_text(WRK_SCRIPT % bodies)
    cpu0 = tree_cpu(pid)
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script),
                          f"{base}/oauth2/token"], capture_output=True, text=True).stdout
    cpu = tree_cpu(pid) - cpu0
    line = next(ln for ln in out.splitlines() if ln.startswith("WRK "))
    n, bad, timeouts, p50, p99, wall = (float(x) for x in line.split()[1:])
    if bad or timeouts:
        raise SystemExit(f"wrk: {bad:.0f} non-2xx answers, {timeouts:.0f} timeouts")
    return {"per_s": n / wall, "p50_ms": p50, "p99_ms": p99, "n": n, "cpu_ms": cpu / n * 1e3}


def guard_overhead(runs: int) -> dict[str, float]:
    from fastapi import Depends, FastAPI

    from keys import KeyRing, generate_private_key, sign_jwt
    from mec_api.deps import requires
    from mec_api.guard import AccessTokenGuard
    from mec_api.principal import Principal
    from mec_api.tokens.feed import RingJwks
    from mec_api.tokens.revocations import RevocationList

    ring = KeyRing(generate_private_key())
    guard = AccessTokenGuard(issuer="https://umec/oauth2", audience="umec-apis",
                             jwks_source=RingJwks(ring), revocations=RevocationList(),
                             feed_applied_at=time.monotonic)
    now = int(time.time())
    token = sign_jwt({"iss": "https://umec/oauth2", "aud": "umec-apis", "sub": "s", "iat": now,
                      "nbf": now, "exp": now + 3600, "jti": "j", "scope": "sensor.read",
                      "client_id": "t:a", "namespace": "t", "app_instance_id": "t.a",
                      "node": "n"}, ring, headers={"typ": "at+jwt"})
    app = FastAPI()
    app.state.guard = guard

    @app.get("/open")
    async def open_route() -> dict[str, str]:
        return {"ok": "yes"}

    @app.get("/guarded")
    async def guarded(_p: Principal = Depends(requires("sensor.read"))) -> dict[str, str]:
        return {"ok": "yes"}

    async def measure() -> dict[str, list[float]]:
        samples: dict[str, list[float]] = {"/open": [], "/guarded": []}
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://bench") as client:
            for path in samples:
                for _ in range(200):
                    await client.get(path, headers=headers)
            for _ in range(runs // 100):
                for path, out in samples.items():
                    for _ in range(100):
                        t0 = time.perf_counter_ns()
                        r = await client.get(path, headers=headers)
                        out.append((time.perf_counter_ns() - t0) / 1e3)
                        assert r.status_code == 200
        return samples

    samples = asyncio.run(measure())
    direct = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        guard.authenticate(authorization=f"Bearer {token}", dpop=None, method="GET",
                           url="http://bench/guarded", scope="sensor.read")
        direct.append((time.perf_counter_ns() - t0) / 1e3)
    first_use = []  # a token the guard has never seen: full signature verification
    fresh = [sign_jwt({"iss": "https://umec/oauth2", "aud": "umec-apis", "sub": "s", "iat": now,
                       "nbf": now, "exp": now + 3600, "jti": f"j{i}", "scope": "sensor.read",
                       "client_id": "t:a", "namespace": "t", "app_instance_id": "t.a",
                       "node": "n"}, ring, headers={"typ": "at+jwt"}) for i in range(1000)]
    for t in fresh:
        t0 = time.perf_counter_ns()
        guard.authenticate(authorization=f"Bearer {t}", dpop=None, method="GET",
                           url="http://bench/guarded", scope="sensor.read")
        first_use.append((time.perf_counter_ns() - t0) / 1e3)
    open_us = statistics.median(samples["/open"])
    guarded_us = statistics.median(samples["/guarded"])
    return {"open_us": open_us, "guarded_us": guarded_us, "overhead_us": guarded_us - open_us,
            "authenticate_us": statistics.median(direct),
            "first_use_us": statistics.median(first_use)}


def revocation_trials(site: Site, api_base: str, tpms: list[SimulatedTpm],
                      prefix: str) -> list[float]:
    latencies = []
    for i, tpm in enumerate(tpms):
        node = site.trusted_node(f"{prefix}-{i:03d}", tpm)
        subject = site.pod_token(node.name, f"{prefix}-pod-{i}")
        token = site.client.post("/oauth2/token",
                                 data={**EXCHANGE, "subject_token": subject}).json()
        auth = {"Authorization": f"Bearer {token['access_token']}"}
        assert httpx.get(f"{api_base}/sensor/v1/tags", headers=auth).status_code == 200
        tpm.extend(14, b"tampered")
        assert node.attest()["state"] == "untrusted"
        failed = time.perf_counter()
        while httpx.get(f"{api_base}/sensor/v1/tags", headers=auth).status_code == 200:
            if time.perf_counter() - failed > 10:
                raise SystemExit("token still accepted 10 s after the failed attestation")
            time.sleep(0.005)
        latencies.append(time.perf_counter() - failed)
    return latencies


def start_api_process(work: Path, base: str, port: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, UMEC_DATA_DIR=str(work / "api"), UMEC_TOKEN_SERVICE_URL=base,
               UMEC_LOG_LEVEL="WARNING")
    log = (work / "api.log").open("wb")
    proc = subprocess.Popen([str(REPO / ".venv" / "bin" / "umec"), "api", "sensor", "--port",
                             str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    wait_healthy(proc, f"http://127.0.0.1:{port}", work)
    return proc


def token_bench_setup(prefix: str, nodes: int) -> tuple[Path, DemoCluster, list[SimulatedTpm],
                                                       list[str], int, str]:
    """A work directory, a cluster issuer, ``nodes`` simulated TPMs and their EK hashes, a
    port and its base URL; the token service's settings in this process's environment (the
    server inherits them)."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    cluster = DemoCluster()
    tpms = [SimulatedTpm(ecc_ek=True) for _ in range(nodes)]
    hashes = [hashlib.sha256(t.ek_public.marshal_tpm2b()).hexdigest() for t in tpms]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    (work / "grants.yaml").write_text(GRANTS)
    os.environ.update(UMEC_TOKEN_SA_JWKS_FILE=str(cluster.write_jwks(work / "jwks.json")),
                      UMEC_TOKEN_GRANTS=str(work / "grants.yaml"), UMEC_PUBLIC_URL=base,
                      UMEC_API_RATE_PER_SECOND="100000", UMEC_API_RATE_BURST="100000")
    return work, cluster, tpms, hashes, port, base


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--pods", type=int, default=500)
    ap.add_argument("--issuances", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--guard-runs", type=int, default=3000)
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--inference-runs", type=int, default=200)
    ap.add_argument("--server-workers", type=int, default=1,
                    help="umec server --workers (CPU is then summed over the workers)")
    args = ap.parse_args()
    print_machine()
    work, cluster, tpms, hashes, port, base = token_bench_setup(
        "bench-tokens-", args.nodes + 2 * args.trials)
    os.environ.update(UMEC_INFERENCE_ENABLED="true",
                      UMEC_MODEL_CACHE_DIR=str(REPO / "bench" / ".model-cache"))
    try:
        with server_process(work, hashes, port,
                            [str(REPO / ".venv" / "bin" / "umec"), "server", "--workers",
                             str(args.server_workers)]) as server:
            site = Site(base, f"sqlite:///{work / 'data' / 'umec.db'}", cluster)
            nodes = [site.trusted_node(f"node-{i:03d}", tpms[i]) for i in range(args.nodes)]
            subjects = [site.pod_token(nodes[i % args.nodes].name, f"pod-{i}")
                        for i in range(args.pods)]
            http = issuance_http(site, subjects, args.threads, args.issuances, server.pid)
            print(f"\n## 1. issuance over HTTP ({args.threads} clients, {args.pods} pods on "
                  f"{args.nodes} nodes)\n{http['per_s']:.0f} issuances/s; "
                  f"{stats_ms(http['lat'])}; server CPU {http['cpu_ms']:.2f} ms per issuance "
                  f"→ capacity ≈ {2000 / http['cpu_ms']:.0f}/s on 2 cores")
            w = issuance_wrk(work, base, subjects, 8, 15, server.pid)
            if w is not None:
                print(f"wrk (1 thread, 8 connections, 15 s): {w['per_s']:.0f} issuances/s, "
                      f"p50 {w['p50_ms']:.2f} ms, p99 {w['p99_ms']:.2f} ms (n={w['n']:.0f}); "
                      f"server CPU {w['cpu_ms']:.2f} ms per issuance")
            print(f"server VmHWM per process (MiB): {tree_hwm_mib(server.pid)}")
            lat = inference_http(site, subjects[0], args.inference_runs)
            print(f"\n## 5. inference over HTTP (coffee 600×400 JPEG, EfficientNet-Lite0, "
                  f"onnxruntime CPU)\n{stats_ms(lat)}; server VmHWM per process with the model "
                  f"loaded (MiB): {tree_hwm_mib(server.pid)}")

            trials = tpms[args.nodes:]
            in_server = revocation_trials(site, base, trials[:args.trials], "rev-srv")
            api_port = free_port()
            api = start_api_process(work, base, api_port)
            try:
                remote = revocation_trials(site, f"http://127.0.0.1:{api_port}",
                                           trials[args.trials:], "rev-api")
            finally:
                api.send_signal(signal.SIGINT)
                api.wait(timeout=15)
            print(f"\n## 4. revocation latency, failed evidence → refused call\n"
                  f"APIs in umec server: {stats_ms(in_server)}\n"
                  f"umec api sensor (own process, HTTP feed): {stats_ms(remote)}")
        core = issuance_core(work, cluster, subjects, args.issuances)
        print(f"\n## 2. issuance core in-process (TokenIssuer.issue, SQLite)\n"
              f"median {core['median_us']:.0f} µs, p90 {core['p90_us']:.0f} µs "
              f"→ {1e6 / core['median_us']:.0f}/s on one core")
        g = guard_overhead(args.guard_runs)
        print(f"\n## 3. guard overhead (in-process ASGI, interleaved)\n"
              f"unguarded median {g['open_us']:.0f} µs, guarded {g['guarded_us']:.0f} µs, "
              f"overhead {g['overhead_us']:.0f} µs; authenticate() alone "
              f"{g['authenticate_us']:.0f} µs for a token seen before, "
              f"{g['first_use_us']:.0f} µs on its first use (signature verified)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def issuance_core(work: Path, cluster: DemoCluster, subjects: list[str],
                  count: int) -> dict[str, float]:
    """TokenIssuer.issue against the benchmark's database, without HTTP."""
    from mec_api.tokens.issuer import TOKEN_EXCHANGE, TOKEN_TYPE_JWT, TokenRequest
    from umec.app import build_server
    from umec.settings import Settings

    settings = Settings(data_dir=work / "data", policy_dir=work / "policies",
                        token_sa_jwks_file=work / "jwks.json",
                        token_grants=work / "grants.yaml",
                        public_url=os.environ["UMEC_PUBLIC_URL"],
                        attestation_interval_seconds=600)
    issuer = build_server(settings).tokens.issuer
    samples = []
    for i in range(count):
        req = TokenRequest(grant_type=TOKEN_EXCHANGE, subject_token=subjects[i % len(subjects)],
                           subject_token_type=TOKEN_TYPE_JWT, scope="sensor.read")
        t0 = time.perf_counter_ns()
        issuer.issue(req, datetime.now(UTC))
        samples.append((time.perf_counter_ns() - t0) / 1e3)
    samples = samples[min(100, count // 10):]
    q = statistics.quantiles(samples, n=10)
    return {"median_us": statistics.median(samples), "p90_us": q[-1]}


if __name__ == "__main__":
    main()
