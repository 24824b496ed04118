"""Benchmark: attestation rounds per second over HTTP on loopback against ONE server process.

Run from the repo root::

    .venv/bin/python bench/attest/bench_rounds.py [--nodes 1000 --rounds 4000 --threads 8]

Steps:

1. Make a work directory with the ``pi-k3s`` policy (sha256 PCRs 0-3, 7, 14; PCR 14 must be
   all zeros, which a fresh SimulatedTpm has) and N simulated nodes (SimulatedTpm, ECC P-256
   EK and AK: an RSA EK takes ~100 ms to generate and changes nothing on the server side).
2. Start ``umec server`` as its own process (``.venv/bin/umec server``) with ``UMEC_DATA_DIR``,
   ``UMEC_POLICY_DIR``, ``UMEC_DEFAULT_NODE_CLASS``, ``UMEC_EK_ALLOWLIST`` (JSON list of the
   nodes' EK hashes; when that would not fit one environment variable it goes into a
   ``UMEC_CONFIG`` YAML file instead), ``UMEC_LISTEN_PORT`` and ``UMEC_LOG_LEVEL=WARNING``;
   SQLite (the default). The attestation interval is raised to 600 s so that no node goes
   ``stale`` while the benchmark visits the others (that would time state changes instead).
3. Enrol and activate every node (threads), timed on its own.
4. Rounds: ``--threads`` client threads in a closed loop, each owning every T-th node, run
   ``--warmup`` rounds, then ``--rounds`` measured rounds (bounded too by ``--max-seconds``).
   A round is as the agent makes it: TPM2_Quote (SimulatedTpm, ECDSA sign) over the previous
   verdict's ``next_challenge`` → evidence → verdict, one request (a node's first round, and
   every round with ``--two-step`` or against a server from before next challenges, asks for a
   challenge first: two requests); every verdict must say ``trusted``. HTTP requests per
   round are reported. Reported: rounds/s, p50/p90/p99/max round latency, and the
   CPU time the server process used per round (``/proc/PID/stat`` utime+stime), which does not
   depend on how fast the load generator is; with ``--postgres`` also the CPU time of the
   PostgreSQL backends serving the bench's own database (their pids from ``pg_stat_activity``,
   their ``/proc/PID/stat``; a backend that exits during the rounds would be missed, the pool
   keeps them open).
5. Server memory after the rounds: VmRSS and VmHWM from ``/proc/PID/status``.

Goal: ≥ 200 rounds/s with p99 ≤ 50 ms on 2 cores; server RSS ≤ 200 MB.
``--database postgresql://USER@HOST:PORT/DB`` runs the server on a fresh database of its own on
that PostgreSQL server (dropped afterwards; ``--postgres``: the machine's shared one, see
bench/benchdb.py). ``--server-repo DIR`` runs the server from another checkout
(``python -m umec`` with that directory first on ``PYTHONPATH``): ``compare_rounds.py`` uses it
to put the code before a change and after it side by side in one run. All nodes connect from
127.0.0.1, so the server's per-source limit on the protocol routes is lifted
(``UMEC_ATTEST_RATE_PER_SOURCE``); the limiter itself still runs on every request.
``--py-spy SECONDS`` additionally samples the server with py-spy (``pip install py-spy`` into
the main venv) during the measured rounds and prints the top functions.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx
import yaml
from benchlib import percentile, print_machine, vm_status

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # the simulated TPM and node are test support (tests/support/)
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from benchdb import (  # noqa: E402
    SHARED_POSTGRES,
    add_database_option,
    is_postgres,
    scratch_database,
)

from tests.support.simagent import SimulatedNode  # noqa: E402
from tests.support.simtpm import SimulatedTpm  # noqa: E402
from umec.localserver import free_port  # noqa: E402

POLICY: dict[str, object] = {"name": "pi-k3s", "selection": {"sha256": [0, 1, 2, 3, 7, 14]},
          "pcrs": {"sha256": {14: ["00" * 32]}}}
ENV_LIMIT = 100_000  # one environment string may hold at most 128 KiB (MAX_ARG_STRLEN)
TICKS = os.sysconf("SC_CLK_TCK")
SPY_MODE: list[str] = os.environ.get("BENCH_PY_SPY_FLAGS", "--gil").split()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def server_env(work: Path, port: int, policy: Mapping[str, object],
               extra: dict[str, str] | None = None, ek_hashes: list[str] | None = None
               ) -> dict[str, str]:
    """The ``UMEC_*`` environment of a benchmark server (SQLite in ``work/data``)."""
    policies = work / "policies"
    policies.mkdir(parents=True, exist_ok=True)
    (policies / f"{policy['name']}.yaml").write_text(yaml.safe_dump(policy))
    env = dict(os.environ, UMEC_DATA_DIR=str(work / "data"), UMEC_POLICY_DIR=str(policies),
               UMEC_DEFAULT_NODE_CLASS=str(policy["name"]), UMEC_LISTEN_PORT=str(port),
               UMEC_LOG_LEVEL="WARNING", UMEC_ATTESTATION_INTERVAL_SECONDS="600",
               UMEC_ATTEST_RATE_PER_SOURCE="1000000", UMEC_ATTEST_BURST_PER_SOURCE="1000000",
               **(extra or {}))
    if ek_hashes:
        allowlist = json.dumps(ek_hashes)
        if len(allowlist) < ENV_LIMIT:
            env["UMEC_EK_ALLOWLIST"] = allowlist
        else:
            (work / "config.yaml").write_text(yaml.safe_dump({"ek_allowlist": ek_hashes}))
            env["UMEC_CONFIG"] = str(work / "config.yaml")
    return env


def wait_healthy(proc: subprocess.Popen[bytes], url: str, work: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"server did not start; see {work / 'server.log'}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)


def backend_cpu(url: str) -> dict[int, float]:
    """CPU seconds of every PostgreSQL backend connected to the database at ``url`` (our own
    query's backend excluded), by pid."""
    import psycopg
    with psycopg.connect(url, autocommit=True) as conn:
        pids = [r[0] for r in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()")]
    out: dict[int, float] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            out[pid] = cpu_seconds(pid)
    return out


@contextmanager
def postgres_database(spec: str = SHARED_POSTGRES) -> Iterator[str]:
    """A fresh database on the PostgreSQL ``spec`` names, dropped afterwards (benchdb)."""
    with scratch_database(spec) as url:
        yield url


@contextmanager
def server_process(work: Path, ek_hashes: list[str], port: int, cmd: list[str],
                   extra: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    env = server_env(work, port, POLICY, extra=extra, ek_hashes=ek_hashes)
    log = (work / "server.log").open("wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=env.get("PYTHONPATH") or None)
    try:
        wait_healthy(proc, f"http://127.0.0.1:{port}", work)
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)  # uvicorn shuts down gracefully on SIGINT
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def run_threads(threads: int, target: Callable[..., object], *args: object) -> None:
    workers = [threading.Thread(target=target, args=(k, *args)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--max-seconds", type=float, default=90.0)
    ap.add_argument("--py-spy", type=float, default=0.0, metavar="SECONDS")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--two-step", action="store_true",
                    help="ask for a fresh challenge every round (ignore next_challenge)")
    add_database_option(ap)
    ap.add_argument("--server-repo", type=Path, default=None, metavar="DIR",
                    help="run the server from this checkout (python -m umec)")
    ap.add_argument("--variant", default=None, metavar="ARGS",
                    help="run serve_variant.py ARGS instead of `umec server` (what-if runs)")
    ap.add_argument("--python", default=str(REPO / ".venv" / "bin" / "python"),
                    help="interpreter for --variant (e.g. bench/.venv-keylime/bin/python)")
    args = ap.parse_args()
    print_machine()

    work = Path(tempfile.mkdtemp(prefix="bench-rounds-"))
    t0 = time.perf_counter()
    tpms = [SimulatedTpm(ecc_ek=True) for _ in range(args.nodes)]
    print(f"# {args.nodes} simulated TPMs made in {time.perf_counter() - t0:.1f} s; "
          f"work dir {work}")
    hashes = [hashlib.sha256(t.ek_public.marshal_tpm2b()).hexdigest() for t in tpms]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
    requests = [0] * args.threads  # client k is used by thread k only

    def counter(k: int) -> Callable[[httpx.Request], None]:
        def count(_: httpx.Request) -> None:
            requests[k] += 1
        return count
    clients = [httpx.Client(base_url=base, timeout=30, limits=limits,
                            event_hooks={"request": [counter(k)]})
               for k in range(args.threads)]
    try:
        cmd = [str(REPO / ".venv" / "bin" / "umec"), "server"]
        if args.variant is not None:
            cmd = [args.python, str(Path(__file__).with_name("serve_variant.py")),
                   *args.variant.split()]
        extra: dict[str, str] = {}
        if args.server_repo is not None:
            cmd = [args.python, "-m", "umec", "server"]
            extra["PYTHONPATH"] = str(args.server_repo.resolve())
        database = scratch_database(args.database)
        print(f"# server: {' '.join(cmd)} "
              f"({'PostgreSQL' if is_postgres(args.database) else 'SQLite'}"
              f"{', from ' + str(args.server_repo) if args.server_repo else ''})")
        with database as url, server_process(
                work, hashes, port, cmd, {**extra, "UMEC_DATABASE_URL": url}) as server:
            idle = vm_status(server.pid)
            nodes = [SimulatedNode(f"node-{i:05d}", clients[i % args.threads], tpm)
                     for i, tpm in enumerate(tpms)]

            def enroll(k: int) -> None:
                for node in nodes[k::args.threads]:
                    enroll_and_activate(node)

            t0 = time.perf_counter()
            run_threads(args.threads, enroll)
            enroll_s = time.perf_counter() - t0
            after_enroll = vm_status(server.pid)
            use_next = not args.two_step
            # With next challenges, every node's first round (two requests) is in the warm-up.
            warmup = max(args.warmup, args.nodes) if use_next else args.warmup
            latencies, failures = rounds(nodes, args.threads, warmup, 1e9, use_next)
            if failures:
                raise SystemExit(f"warm-up verdicts not trusted: {failures[:3]}")
            spy = start_py_spy(server.pid, args.py_spy, work) if args.py_spy else None
            pg0 = backend_cpu(url) if url else {}
            cpu0, t0 = cpu_seconds(server.pid), time.perf_counter()
            own0, requests0 = time.process_time(), sum(requests)
            latencies, failures = rounds(nodes, args.threads, args.rounds, args.max_seconds,
                                         use_next)
            per_round = (sum(requests) - requests0) / max(1, len(latencies))
            wall = time.perf_counter() - t0
            cpu = cpu_seconds(server.pid) - cpu0
            pg1 = backend_cpu(url) if url else {}
            pg_cpu = sum(v - pg0.get(pid, 0.0) for pid, v in pg1.items()) if url else None
            client_cpu = time.process_time() - own0
            mem = vm_status(server.pid)
            if spy is not None:
                spy.wait()
        report(args, enroll_s, latencies, failures, wall, cpu, client_cpu, idle,
               after_enroll, mem, pg_cpu)
        print(f"\nHTTP requests per measured round: {per_round:.2f}")
        if args.py_spy:
            print_py_spy(work / "py-spy.txt")
    finally:
        for c in clients:
            c.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def enroll_and_activate(node: SimulatedNode) -> None:
    """As SimulatedNode does, also against servers from before enrolment ids (for compare)."""
    resp = node.enroll()
    resp.raise_for_status()
    ch = resp.json()
    secret = node.tpm.activate_credential(base64.b64decode(ch["credential_blob"]),
                                          base64.b64decode(ch["encrypted_secret"]))
    node.client.post(f"{node.base}/activate", json={
        "enrollment_id": ch.get("enrollment_id", "0" * 32),
        "secret": base64.b64encode(secret).decode()}).raise_for_status()


def rounds(nodes: list[SimulatedNode], threads: int, total: int, max_seconds: float,
           use_next: bool) -> tuple[list[float], list[str]]:
    """``total`` rounds spread over the nodes by ``threads`` closed-loop client threads (over
    each node's held next challenge when ``use_next``)."""
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    remaining = [total]
    stop_at = time.monotonic() + max_seconds

    def worker(k: int) -> None:
        mine = nodes[k::threads]
        i = 0
        while time.monotonic() < stop_at:
            with lock:
                if remaining[0] <= 0:
                    return
                remaining[0] -= 1
            node = mine[i % len(mine)]
            i += 1
            t0 = time.perf_counter()
            verdict = node.attest(use_next=use_next)
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)
                if verdict.get("state") != "trusted":
                    failures.append(f"{node.name}: {verdict.get('failed_checks')}")

    run_threads(threads, worker)
    return latencies, failures


def report(args: argparse.Namespace, enroll_s: float, latencies: list[float],
           failures: list[str], wall: float, cpu: float, client_cpu: float,
           idle: dict[str, int],
           after_enroll: dict[str, int], mem: dict[str, int],
           pg_cpu: float | None = None) -> None:
    lat = sorted(latencies)
    n = len(lat)
    rps = n / wall
    p50, p90, p99 = (percentile(lat, p) * 1e3 for p in (50, 90, 99))
    print(f"\n## Rounds over HTTP ({args.nodes} nodes, {args.threads} client threads, "
          f"{n} measured rounds after {args.warmup} warm-up)\n")
    print("| metric | value |\n|---|---:|")
    rows = [
        ("enrolment + activation", f"{args.nodes / enroll_s:.0f} nodes/s "
                                   f"({enroll_s:.1f} s for {args.nodes})"),
        ("rounds/s", f"**{rps:.0f}**"),
        ("round latency p50", f"{p50:.1f} ms"),
        ("round latency p90", f"{p90:.1f} ms"),
        ("round latency p99", f"**{p99:.1f} ms**"),
        ("round latency max", f"{lat[-1] * 1e3:.1f} ms"),
        ("server CPU per round", f"{cpu / n * 1e3:.2f} ms ({cpu / wall * 100:.0f}% of one "
                                 f"core over {wall:.1f} s)"),
        *([("PostgreSQL backend CPU per round", f"{pg_cpu / n * 1e3:.2f} ms")]
          if pg_cpu is not None else []),
        ("load generator (client process) CPU per round", f"{client_cpu / n * 1e3:.2f} ms"),
        ("verdicts not trusted", str(len(failures))),
        ("server VmRSS idle / after enrolment / after rounds",
         f"{idle['VmRSS'] / 1024:.1f} / {after_enroll['VmRSS'] / 1024:.1f} / "
         f"{mem['VmRSS'] / 1024:.1f} MiB"),
        ("server VmHWM (peak RSS) after rounds", f"**{mem['VmHWM'] / 1024:.1f} MiB**"),
    ]
    for k, v in rows:
        print(f"| {k} | {v} |")
    ok_rate, ok_p99 = rps >= 200, p99 <= 50
    ok_mem = mem["VmHWM"] <= 200 * 1024
    print(f"\n- goal ≥ 200 rounds/s: {'met' if ok_rate else 'MISSED'}; p99 ≤ 50 ms: "
          f"{'met' if ok_p99 else 'MISSED'}; server ≤ 200 MB: {'met' if ok_mem else 'MISSED'}")
    if failures:
        print(f"- first failures: {failures[:5]}")


def start_py_spy(pid: int, seconds: float, work: Path) -> subprocess.Popen[bytes]:
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return subprocess.Popen([exe, "record", "--pid", str(pid), "--duration", str(int(seconds)),
                             "--rate", "200", "--format", "raw", *SPY_MODE, "--output",
                             str(work / "py-spy.txt"), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# Where a sample's innermost frame lives -> a coarse layer of the stack.
LAYERS = (("sqlalchemy", "SQLAlchemy (ORM + Core)"), ("sqlite3", "sqlite3 driver"),
          ("h11", "HTTP parsing (h11)"), ("httptools", "HTTP parsing (httptools)"),
          ("uvicorn", "uvicorn"), ("starlette", "Starlette"), ("fastapi", "FastAPI"),
          ("anyio", "anyio (thread hand-off)"), ("asyncio", "asyncio event loop"),
          ("uvloop", "uvloop"), ("pydantic", "pydantic"), ("jwt", "PyJWT"),
          ("cryptography", "cryptography"), ("(attest/", "attest (ours)"),
          ("(keys/", "keys (ours)"), ("(umec/", "umec (ours)"), ("prometheus", "prometheus"),
          ("threading", "threading"), ("json", "json"))
# Frames whose inclusive share says what a round costs, per step.
MARKERS = (("issue_challenge", "challenge: verifier.issue_challenge"),
           ("submit_evidence", "evidence: verifier.submit_evidence"),
           ("appraise_evidence", "  of which appraise_evidence (pure core)"),
           ("sign_jwt", "  of which sign_jwt (attestation result)"),
           ("Session.get ", "SQLAlchemy Session.get (all)"),
           ("SessionTransaction.commit", "SQLAlchemy commit (all)"),
           ("BaseHTTPMiddleware", "Starlette BaseHTTPMiddleware (metrics_mw)"),
           ("h11_impl", "uvicorn h11 protocol"), ("httptools_impl", "uvicorn httptools protocol"),
           ("serialize_response", "FastAPI serialize_response"),
           ("solve_dependencies", "FastAPI solve_dependencies (body parsing)"),
           ("mark_stale_nodes", "deadline loop: mark_stale_nodes"))


def print_py_spy(path: Path) -> None:
    """Summarise py-spy's collapsed stacks (``--gil``: samples of the thread holding the GIL)."""
    layers: dict[str, int] = {}
    marks: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        leaf = stack.rsplit(";", 1)[-1]
        layer = next((name for key, name in LAYERS if key in leaf), "other")
        layers[layer] = layers.get(layer, 0) + n
        for key, name in MARKERS:
            if key in stack:
                marks[name] = marks.get(name, 0) + n
    if not total:
        print("\n(py-spy recorded no samples)")
        return
    print(f"\n### py-spy ({' '.join(SPY_MODE)}): {total} samples of the server\n")
    print("| layer of the innermost frame | share |\n|---|---:|")
    for name, n in sorted(layers.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {n / total * 100:.1f}% |")
    print("\n| frame on the stack (inclusive) | share |\n|---|---:|")
    for _, name in MARKERS:
        print(f"| {name} | {marks.get(name, 0) / total * 100:.1f}% |")


if __name__ == "__main__":
    main()
