"""Scale benchmark (issue 15): N simulated nodes at a fixed interval against R ``umec server``
replicas on one database, for a fixed duration. Run by hand, not in CI.

Run from the repo root::

    .venv/bin/python bench/attest/bench_scale.py [--nodes 10000 --interval 60 --duration 600
        --replicas 3 --database postgresql://postgres@127.0.0.1:5432/test] [--json out.json]
    .venv/bin/python bench/attest/bench_scale.py --database sqlite --replicas 1 --nodes 3000 \\
        --duration 180

What it does:

1. **Nodes**: N SimulatedTpms (ECC P-256 EK and AK: the AK is always ECDSA P-256, the cheapest
   quote the policy accepts) plus one revocation lane node, made in this process. Policy
   ``pi-k3s`` (sha256 PCRs 0-3, 7, 14; PCR 14 must be zeros) with ``interval_seconds`` =
   ``--interval``; the server's grace (``stale_grace_seconds``) is the default 15 s.
2. **Replicas**: R real ``umec server`` processes (``python -m umec server``, from
   ``--server-repo``, default this checkout), each on its own port, on one fresh database
   (``bench/benchdb.py``: created on the named PostgreSQL server and dropped afterwards, or
   SQLite in the work directory). They share one ``UMEC_DATA_DIR`` (the result and
   access-token key rings and ``keys/challenge-key``, the MAC key of the stateless challenge
   nonces, as replicas mount them alike), one policy directory, one operator
   token and one ``UMEC_PUBLIC_URL`` (the token issuer). Replica 0 starts first (it creates the
   key rings), the others after it is healthy.
3. **Load generators**: ``--generators`` processes (forked after the TPMs exist, so their CPU
   is not the servers'), asyncio + aiohttp, each owning every P-th node. They first enrol and
   activate their nodes (timed; enrolment round-robin over the replicas). Then node ``g``
   attests at ``T0 + g * interval / N + k * interval`` for ``k = 0, 1, …`` until
   ``T0 + duration``, round ``k`` on replica ``(g + k) % R``. A scheduler takes due rounds in
   time order and starts each when at most ``--concurrency`` rounds of that process are in
   flight, so an overloaded system shows as **lateness** (start minus due time), not as a
   silently lower offered rate. A round is challenge → TPM2_Quote (signed per round: the nonce
   is the server's) → evidence → verdict, or, as the agent makes it, over the previous
   verdict's ``next_challenge`` while at least 10 s of its lifetime are left (one request;
   ``--two-step`` never holds one). At a 60 s interval with the default 60 s nonce lifetime
   no held challenge is young enough, so every round is two requests.
4. **Samplers** (in this process): every second the holder of the ``deadlines`` lease (the
   row's holder names the replica's PID: the replica holding it is the one whose periodic task
   runs the deadline sweep, ``attest/service/background.py``); every 10 s each replica's VmRSS,
   the CPU seconds (``/proc/PID/stat`` utime+stime) of each replica and of every PostgreSQL
   backend connected to the bench's database (backends first seen after the start are counted
   from zero; CPU of a backend between its last sample and its exit is missed; the WAL writer,
   checkpointer and other shared PostgreSQL processes are not counted).
5. **Revocation probes** (``--revocations``, spread evenly over the run): the lane node attests
   ``trusted`` on replica ``j % R``, exchanges its pod's service-account token for an access
   token there (``/oauth2/token``), and a client per replica calls ``GET /sensor/v1/tags`` with
   it every ``--probe-ms``; then PCR 14 is extended and the node attests ``untrusted`` on that
   replica (which revokes the node's tokens by trust epoch in the same transaction). Latency per
   replica: from the failed verdict's answer to the answer of that replica's first 401 (0 when
   it came earlier); no 401 within 10 s is a lost revocation.
6. **Verdicts**: at the end every ``stale`` event is read from ``attest_events`` and held
   against the generator's own record of that node: **false** if the node had a ``trusted``
   answer within interval + grace − 1 s before the event (it had proven freshness; a server
   bug), **overload** if the node's next round (by the schedule) was due before the event but
   started or finished too late, or never started (a generator more than one interval behind
   at the end stops; those rounds count as due but never started): the system did not keep up,
   a correct verdict on what arrived; otherwise **unexplained**.

Reported (and with ``--json`` written): rounds/s achieved against needed (N / interval),
lateness and latency percentiles, non-trusted answers by status or failed check, the stale
events by class, which replicas held the deadline lease, RSS per replica (first / last / max and
the least-squares slope after the first interval), revocation latency per replica, and CPU: the
servers' and the PostgreSQL backends' seconds per round, over the whole run and over the steady
part (after the first interval, whose rounds move nodes from ``enrolled`` to ``trusted``), and
from that **what one core holds**: ``interval / CPU seconds per round`` nodes. Last, the
replicas' logs are scanned once they stopped: lines at level error/critical by logger and
message, lines carrying a traceback, and lines naming ``DeadlockDetected``, a failed or
refused connection or an exhausted pool, per replica.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(HERE), str(REPO / "bench"), str(REPO / "bench" / "tokens"), str(REPO)]

from bench_rounds import POLICY, cpu_seconds, server_env, wait_healthy  # noqa: E402
from bench_tokens import EXCHANGE, GRANTS  # noqa: E402
from benchdb import SHARED_POSTGRES, is_postgres, scratch_database  # noqa: E402
from benchlib import machine, percentile, vm_status  # noqa: E402

from attest.agent import HELD_CHALLENGE_MARGIN_SECONDS  # noqa: E402
from tests.support.simagent import SimulatedNode, pcr_body  # noqa: E402
from tests.support.simtpm import SimulatedTpm  # noqa: E402
from umec.demo_tokens import DemoCluster  # noqa: E402
from umec.localserver import free_port  # noqa: E402

GRACE = 15.0           # the server's default stale_grace_seconds
NONCE_TTL = 60.0       # the server's default nonce_ttl_seconds
LOST_AFTER = 10.0      # a revocation no replica refused within this is lost
OPERATOR_TOKEN = "bench-scale-operator-token-" + "x" * 16
DIGEST = "sha256:" + "ef" * 32
TAGS = "/sensor/v1/tags"
FALSE_GAPS: list[float] = []  # event time minus the last passing round's start, false ones
TPMS: list[SimulatedTpm] = []  # made before the generators fork; they inherit it


# -- the load generator (a forked process per --generators) -------------------------------

@dataclass
class Round:
    node: int
    replica: int
    due: float
    start: float
    end: float
    tag: str  # "trusted", "state:<s>:<checks>", "<step>:<status>", "exc:<type>"
    skew: float = 0.0  # the replica's clock outside [sent, answered] of its challenge, s
    requests: int = 0  # HTTP requests the round made (1 over a held next challenge)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Generator:
    """One load-generator process: its nodes, its HTTP sessions, its records."""

    def __init__(self, part: int, parts: int, urls: list[str], args: argparse.Namespace) -> None:
        self.mine = list(range(part, args.nodes, parts))
        self.urls, self.args = urls, args
        self.rounds: list[Round] = []
        self.pcr_cache: dict[tuple[Any, ...], dict[str, dict[str, str]]] = {}
        self.held: dict[int, dict[str, Any]] = {}  # node -> its latest verdict's next challenge

    async def enroll(self, session: Any, g: int) -> str:
        """Enrol and activate node ``g``; '' or what failed."""
        tpm, url = TPMS[g], self.urls[g % len(self.urls)]
        body = {"name": f"node-{g:05d}", "ek_public": b64(tpm.ek_public.marshal_tpm2b()),
                "ak_public": b64(tpm.ak_public.marshal_tpm2b()), "node_class": None}
        async with session.post(f"{url}/attest/v1/nodes", json=body) as r:
            if r.status != 200:
                return f"enrol:{r.status}"
            ch = await r.json()
        secret = tpm.activate_credential(base64.b64decode(ch["credential_blob"]),
                                         base64.b64decode(ch["encrypted_secret"]))
        async with session.post(f"{url}/attest/v1/nodes/node-{g:05d}/activate", json={
                "enrollment_id": ch["enrollment_id"], "secret": b64(secret)}) as r:
            return "" if r.status == 200 else f"activate:{r.status}"

    async def enroll_all(self, session: Any) -> dict[str, Any]:
        sem = asyncio.Semaphore(self.args.enroll_concurrency)
        errors: Counter[str] = Counter()

        async def one(g: int) -> None:
            async with sem:
                try:
                    err = await self.enroll(session, g)
                except Exception as e:
                    err = f"exc:{type(e).__name__}"
                if err:
                    errors[err] += 1

        t0 = time.time()
        await asyncio.gather(*(one(g) for g in self.mine))
        return {"seconds": time.time() - t0, "nodes": len(self.mine), "errors": dict(errors)}

    def pcrs(self, values: dict[str, dict[int, bytes]]) -> dict[str, dict[str, str]]:
        key = tuple((b, tuple(v.items())) for b, v in values.items())
        if key not in self.pcr_cache:  # every node has the same (fresh) PCRs
            self.pcr_cache[key] = pcr_body(values)
        return self.pcr_cache[key]

    async def attest(self, session: Any, g: int, url: str, skew: list[float],
                     requests: list[int]) -> str:
        """One round of node ``g`` as the agent makes it: over the held next challenge when it
        is usable (one request; if the replica calls it void, a fresh challenge follows), else
        over a fresh one."""
        base = f"{url}/attest/v1/nodes/node-{g:05d}"
        held = self.held.pop(g, None)
        if held is not None and time.monotonic() < held["usable_until"]:
            tag = await self.evidence(session, g, base, held, skew, requests)
            if not tag.startswith("evidence:4"):
                return tag
        sent = time.time()
        requests[0] += 1
        async with session.post(f"{base}/challenge") as r:
            if r.status != 200:
                return f"challenge:{r.status}"
            ch = await r.json()
        skew[0] = clock_skew(ch["expires_at"], sent, time.time())
        return await self.evidence(session, g, base, ch, skew, requests)

    async def evidence(self, session: Any, g: int, base: str, ch: dict[str, Any],
                       skew: list[float], requests: list[int]) -> str:
        nonce = base64.b64decode(ch["nonce"])
        attest, sig, values = TPMS[g].quote(
            nonce, {b: frozenset(v) for b, v in ch["selection"].items()})
        sent = time.time()
        requests[0] += 1
        async with session.post(f"{base}/evidence", json={
                "nonce": ch["nonce"], "quote": b64(attest), "signature": b64(sig),
                "pcrs": self.pcrs(values), "event_log": None}) as r:
            if r.status != 200:
                return f"evidence:{r.status}"
            verdict = await r.json()
        following = verdict.get("next_challenge")
        if isinstance(following, dict) and not self.args.two_step:
            skew[0] = clock_skew(following["expires_at"], sent, time.time())
            self.held[g] = {**following, "usable_until": time.monotonic()
                            + following["expires_in"] - HELD_CHALLENGE_MARGIN_SECONDS}
        state = verdict.get("state")
        if state == "trusted":
            return "trusted"
        return f"state:{state}:{','.join(verdict.get('failed_checks') or [])}"

    async def one_round(self, session: Any, g: int, k: int, due: float,
                        sem: asyncio.Semaphore) -> None:
        replica = (g + k) % len(self.urls)
        start, skew, requests = time.time(), [0.0], [0]
        try:
            tag = await self.attest(session, g, self.urls[replica], skew, requests)
        except Exception as e:
            tag = f"exc:{type(e).__name__}"
        finally:
            sem.release()
        self.rounds.append(Round(g, replica, due, start, time.time(), tag, skew[0],
                                 requests[0]))

    async def drive(self, session: Any, t0: float) -> int:
        """Start every due round in time order; returns how many were due but never started."""
        n, interval = self.args.nodes, self.args.interval
        end = t0 + self.args.duration
        sem = asyncio.Semaphore(self.args.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        # Counted from the schedule, not in the loop below: once hopelessly behind it stops
        # after the first round of each later k, which undercounted what was never started.
        due_total = sum(len(schedule(g, n, interval, t0, end)) for g in self.mine)
        k, started = 0, 0
        while t0 + k * interval < end:
            for g in self.mine:
                due = t0 + g * interval / n + k * interval
                if due >= end:
                    break
                if due > time.time():
                    await asyncio.sleep(due - time.time())
                await sem.acquire()
                if time.time() >= end + self.args.interval:  # hopelessly behind: stop
                    sem.release()
                    break
                task = asyncio.create_task(self.one_round(session, g, k, due, sem))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                started += 1
            k += 1
        if tasks:
            await asyncio.wait(tasks, timeout=60)
        return due_total - started

    async def main(self, conn: Connection) -> None:
        import aiohttp
        timeout = aiohttp.ClientTimeout(total=30)
        connector = aiohttp.TCPConnector(limit=self.args.concurrency + 8)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            conn.send(("enrolled", await self.enroll_all(session)))
            t0 = conn.recv()
            never = await self.drive(session, t0)
        conn.send(("done", {"never_started": never, "rounds": self.rounds,
                            "cpu": time.process_time()}))


def schedule(g: int, nodes: int, interval: float, t0: float, end: float) -> list[float]:
    """The due times of node ``g``'s rounds: ``t0 + g * interval / nodes + k * interval``
    before ``end``."""
    first = t0 + g * interval / nodes
    return [first + k * interval for k in range(max(0, int(-(-(end - first) // interval))))]


def clock_skew(expires_at: str, sent: float, answered: float) -> float:
    """How far the replica's clock (a challenge's expiry minus the nonce lifetime, read when it
    was issued) lay outside [sent, answered] of this machine's wall clock: + ahead, − behind."""
    from datetime import datetime
    issued = datetime.fromisoformat(expires_at).timestamp() - NONCE_TTL
    return issued - answered if issued > answered else min(0.0, issued - sent)


def generator_process(part: int, parts: int, urls: list[str], args: argparse.Namespace,
                      conn: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent ends the run
    asyncio.run(Generator(part, parts, urls, args).main(conn))


# -- the replicas ---------------------------------------------------------------------------

@dataclass
class Site:
    work: Path
    db_url: str                       # what the servers were given ("" = SQLite in data/)
    interval: float
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    logs: list[dict[str, Any]] = field(default_factory=list)  # scan_logs, once they stopped

    @property
    def sql_url(self) -> str:
        return self.db_url or f"sqlite:///{self.work / 'data' / 'umec.db'}"


def replica_env(site: Site, port: int, hashes: list[str], public: str) -> dict[str, str]:
    policy = {**POLICY, "interval_seconds": site.interval}
    extra = {"UMEC_DATABASE_URL": site.db_url, "UMEC_OPERATOR_TOKEN": OPERATOR_TOKEN,
             "UMEC_PUBLIC_URL": public, "UMEC_TOKEN_GRANTS": str(site.work / "grants.yaml"),
             "UMEC_TOKEN_SA_JWKS_FILE": str(site.work / "sa-jwks.json"),
             "UMEC_API_RATE_PER_SECOND": "1000000", "UMEC_API_RATE_BURST": "1000000"}
    return server_env(site.work, port, policy, extra=extra, ek_hashes=hashes)


def start_replica(site: Site, i: int, hashes: list[str], cmd: list[str],
                  server_repo: Path | None) -> None:
    port = free_port()
    public = site.urls[0] if site.urls else f"http://127.0.0.1:{port}"
    env = replica_env(site, port, hashes, public)
    if server_repo is not None:
        env["PYTHONPATH"] = str(server_repo)
    with (site.work / f"replica-{i}.log").open("wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=str(server_repo or REPO))
    site.procs.append(proc)
    site.urls.append(f"http://127.0.0.1:{port}")


def wait_all(site: Site, first: int) -> None:
    for proc, url in zip(site.procs[first:], site.urls[first:], strict=True):
        wait_healthy(proc, url, site.work)


def stop_replicas(site: Site) -> None:
    for proc in site.procs:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
    for proc in site.procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def replicas(site: Site, n: int, hashes: list[str], server_repo: Path | None) -> Iterator[Site]:
    cmd = [str(REPO / ".venv" / "bin" / "python"), "-m", "umec", "server"]
    try:
        start_replica(site, 0, hashes, cmd, server_repo)
        wait_all(site, 0)  # replica 0 creates the key rings; then the others at once
        for i in range(1, n):
            start_replica(site, i, hashes, cmd, server_repo)
        wait_all(site, 1)
        yield site
    finally:
        stop_replicas(site)
        site.logs = scan_logs(site)


LOG_PATTERNS = {"DeadlockDetected": ("deadlockdetected", "deadlock detected"),
                "connection failure": ("connection failed", "could not connect",
                                       "too many clients", "connection refused",
                                       "server closed the connection", "operationalerror"),
                "pool exhausted": ("queuepool limit",),
                "traceback": ("traceback", '"exc":')}


def scan_logs(site: Site) -> list[dict[str, Any]]:
    """Per replica: error/critical lines by logger and message, and lines per LOG_PATTERNS."""
    out = []
    for i in range(len(site.procs)):
        path = site.work / f"replica-{i}.log"
        levels: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        hits: Counter[str] = Counter()
        text = path.read_text(errors="replace") if path.exists() else ""
        for line in text.splitlines():
            low = line.lower()
            for name, needles in LOG_PATTERNS.items():
                hits[name] += any(n in low for n in needles)
            try:
                entry = json.loads(line)
            except ValueError:
                levels["(not json)"] += 1
                continue
            level = str(entry.get("level", "?")) if isinstance(entry, dict) else "?"
            levels[level] += 1
            if level in ("error", "critical"):
                errors[f"{entry.get('logger')}: {str(entry.get('msg'))[:80]}"] += 1
        out.append({"lines": len(text.splitlines()), "levels": dict(levels),
                    "errors": dict(errors.most_common(10)),
                    "patterns": {k: v for k, v in hits.items() if v}})
    return out


# -- samplers (this process) ----------------------------------------------------------------

class Sampler(threading.Thread):
    """Lease holder every second; RSS and CPU of replicas and backends every 10 s."""

    def __init__(self, site: Site) -> None:
        super().__init__(daemon=True)
        from sqlalchemy import create_engine
        self.site, self.stop = site, threading.Event()
        url = site.sql_url.replace("postgresql://", "postgresql+psycopg://", 1)
        self.engine = create_engine(url)
        self.pg = is_postgres(site.sql_url)
        self.pids = [p.pid for p in site.procs]
        self.holders: Counter[str] = Counter()      # replica index (or "none"/"other") -> s
        self.holder_changes: list[tuple[float, str]] = []
        self.samples: list[dict[str, Any]] = []     # time, rss[], cpu[], pg{pid: cpu}
        self.pg_seen: dict[int, float] = {}         # backend pid -> CPU when first seen

    def holder(self) -> str:
        from sqlalchemy import text
        with self.engine.connect() as c:
            row = c.execute(text("SELECT holder FROM leases WHERE name = 'deadlines'")).first()
        if row is None:
            return "none"
        pid = int(str(row[0]).split(":")[1])
        return str(self.pids.index(pid)) if pid in self.pids else f"other:{pid}"

    def backends(self) -> dict[int, float]:
        from sqlalchemy import text
        if not self.pg:
            return {}
        with self.engine.connect() as c:
            pids = [r[0] for r in c.execute(text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()"))]
        out: dict[int, float] = {}
        for pid in pids:
            with contextlib.suppress(OSError):
                out[pid] = cpu_seconds(pid)
        return out

    def sample(self) -> dict[str, Any]:
        s = {"t": time.time(), "rss": [vm_status(p)["VmRSS"] / 1024 for p in self.pids],
             "cpu": [cpu_seconds(p) for p in self.pids], "pg": self.backends()}
        self.samples.append(s)
        return s

    def run(self) -> None:
        tick = 0
        while not self.stop.wait(1.0):
            with contextlib.suppress(Exception):
                h = self.holder()
                self.holders[h] += 1
                if not self.holder_changes or self.holder_changes[-1][1] != h:
                    self.holder_changes.append((time.time(), h))
            tick += 1
            if tick % 10 == 0:
                with contextlib.suppress(OSError):
                    self.sample()


def pg_cpu_between(a: dict[int, float], b: dict[int, float]) -> float:
    """CPU of backends from sample ``a`` to ``b`` (a backend new in ``b`` counts from zero)."""
    return sum(v - a.get(pid, 0.0) for pid, v in b.items())


# -- revocation probes ----------------------------------------------------------------------

@dataclass
class Watch:
    """One replica's view of the lane's token during one probe (perf_counter times)."""

    failing_at: float = 0.0        # just before the failing evidence was sent
    failed_at: float = 0.0         # when its answer (untrusted) arrived
    refused_at: float | None = None
    n503: int = 0
    early: int = 0                 # 401s sent before the failure began (should be none)


@dataclass
class Probe:
    replica: int
    latencies: list[float | None]  # per replica, s after the failed verdict (None: lost)
    n503: int = 0
    error: str = ""


def exchange(client: httpx.Client, subject: str) -> dict[str, str]:
    for _ in range(100):
        r = client.post("/oauth2/token", data={**EXCHANGE, "subject_token": subject})
        if r.status_code == 200:
            return {"Authorization": f"Bearer {r.json()['access_token']}"}
        time.sleep(0.02)
    raise RuntimeError(f"token exchange refused: {r.status_code} {r.text[:200]}")


class Revoker(threading.Thread):
    """``count`` revocation probes spread evenly over [t0, t0 + duration]."""

    def __init__(self, site: Site, tpm: SimulatedTpm, subject: str, t0: float,
                 args: argparse.Namespace) -> None:
        super().__init__(daemon=True)
        self.site, self.subject, self.t0, self.args = site, subject, t0, args
        self.clients = [httpx.Client(base_url=u, timeout=30) for u in site.urls]
        self.node = SimulatedNode("rev-lane", self.clients[0], tpm)
        self.probes: list[Probe] = []
        self.stop = threading.Event()

    def run(self) -> None:
        n = self.args.revocations
        for j in range(n):
            at = self.t0 + (j + 1) * self.args.duration / (n + 1)
            if self.stop.wait(max(0.0, at - time.time())):
                return
            try:
                self.probes.append(self.probe(j % len(self.site.urls), j))
            except (RuntimeError, httpx.HTTPError) as e:
                self.probes.append(Probe(j % len(self.site.urls), [], error=str(e)[:200]))

    def probe(self, a: int, j: int) -> Probe:
        self.node.client = self.clients[a]
        if j:
            self.node.tpm.reboot()  # PCRs back to zeros: the node can be trusted again
        verdict = self.node.attest()
        if verdict.get("state") != "trusted":
            raise RuntimeError(f"lane not trusted again: {str(verdict)[:200]}")
        auth = exchange(self.clients[a], self.subject)
        watches = [Watch() for _ in self.clients]
        threads = [threading.Thread(target=self.watch, args=(i, auth, w))
                   for i, w in enumerate(watches)]
        for t in threads:
            t.start()
        time.sleep(0.1)  # the token in use everywhere before the failure
        self.node.tpm.extend(14, b"tampered application")
        failing = time.perf_counter()
        for w in watches:
            w.failing_at = failing
        verdict = self.node.attest()
        failed = time.perf_counter()
        for w in watches:
            w.failed_at = failed
        for t in threads:
            t.join()
        if verdict.get("state") != "untrusted":
            raise RuntimeError(f"lane not untrusted: {str(verdict)[:200]}")
        early = sum(w.early for w in watches)
        return Probe(a, [None if w.refused_at is None else max(0.0, w.refused_at - failed)
                         for w in watches], sum(w.n503 for w in watches),
                     f"{early} refusals before the failure" if early else "")

    def watch(self, i: int, auth: dict[str, str], w: Watch) -> None:
        """Call replica ``i`` with the token until its first 401 sent after the failure
        began (or ``LOST_AFTER`` s after the failed verdict)."""
        client, pace = self.clients[i], self.args.probe_ms / 1e3
        while not (w.failed_at and time.perf_counter() - w.failed_at > LOST_AFTER):
            sent = time.perf_counter()
            status = client.get(TAGS, headers=auth).status_code
            answered = time.perf_counter()
            w.n503 += status == 503
            if status == 401 and w.failing_at and sent >= w.failing_at:
                w.refused_at = answered
                return
            w.early += status == 401
            time.sleep(pace)


def pod_subject(site: Site, cluster: Any) -> str:
    """An admitted pod on the lane node, and its service-account token from ``cluster``
    (a ``umec.demo_tokens.DemoCluster`` whose JWKS the replicas were given)."""
    from sqlalchemy.orm import sessionmaker

    from admission.service.records import AdmittedImage, SqlAdmissionRecords
    from umec.db import make_engine
    # make_engine, not open_database: this process must never migrate the servers' database
    # (this checkout may hold a migration the servers' --server-repo does not).
    engine = make_engine(site.sql_url)
    SqlAdmissionRecords(sessionmaker(engine, expire_on_commit=False)).record(
        namespace="tenant-a", name="rev-pod", uid="uid-rev-pod",
        images=[AdmittedImage("spec.containers[0]", f"r/a@{DIGEST}", DIGEST, ("ci",))],
        verified=True, policy_generation="bench-scale")
    engine.dispose()
    return str(cluster.pod_token("tenant-a", "app", "rev-pod", "uid-rev-pod", "rev-lane"))


# -- analysis -------------------------------------------------------------------------------

def stale_events(site: Site, checks: Counter[str]) -> list[tuple[str, float]]:
    """Every ``stale`` event (node, time); ``checks`` counts their failed checks."""
    from sqlalchemy import create_engine, text
    url = site.sql_url.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = create_engine(url)
    with engine.connect() as c:
        rows = c.execute(text("SELECT node, at, failed_checks FROM attest_events "
                              "WHERE state = 'stale'")).all()
    engine.dispose()
    out = []
    for node, at, failed in rows:
        checks.update(json.loads(failed) if isinstance(failed, str) else failed or [])
        if isinstance(at, str):  # SQLite without the column type's conversion
            from datetime import datetime
            at = datetime.fromisoformat(at)
        if at.tzinfo is None:
            from datetime import UTC
            at = at.replace(tzinfo=UTC)
        out.append((str(node), at.timestamp()))
    return out


def classify_stale(events: list[tuple[str, float]], rounds: list[Round],
                   args: argparse.Namespace, t0: float) -> Counter[str]:
    """false / ambiguous / overload / unexplained, see the module docstring (step 6)."""
    by_node: dict[int, list[Round]] = {}
    for r in rounds:
        by_node.setdefault(r.node, []).append(r)
    out: Counter[str] = Counter()
    FALSE_GAPS.clear()
    interval = args.interval
    window = interval + GRACE - 1.0
    for name, at in events:
        if not name.startswith("node-"):
            out["other node"] += 1
            continue
        g = int(name[5:])
        mine = by_node.get(g, [])
        passes = [r for r in mine if r.tag == "trusted" and r.end <= at]
        last = max(passes, key=lambda r: r.end, default=None)
        if last is not None and at - last.start < window:
            out["false"] += 1      # the server had the proof well within the window
            FALSE_GAPS.append(at - last.start)
        elif last is not None and at - last.end < window:
            out["ambiguous"] += 1  # only if the server took long to commit that proof
        elif any(d < at for d in schedule(g, args.nodes, interval, t0, t0 + args.duration)
                 if last is None or d > last.due):
            out["overload"] += 1   # a round was due (started late, or never) but had not
            #                        passed by then
        else:
            out["unexplained"] += 1
    return out


def slope_mib_per_min(points: list[tuple[float, float]]) -> float:
    if len(points) < 2:
        return 0.0
    ts = [t / 60 for t, _ in points]
    vs = [v for _, v in points]
    mt, mv = statistics.fmean(ts), statistics.fmean(vs)
    den = sum((t - mt) ** 2 for t in ts)
    return sum((t - mt) * (v - mv) for t, v in zip(ts, vs, strict=True)) / den if den else 0.0


def cpu_window(sampler: Sampler, rounds: list[Round], since: float) -> dict[str, float]:
    """Server and backend CPU per round between the first sample at or after ``since`` and
    the last sample."""
    samples = [s for s in sampler.samples if s["t"] >= since]
    if len(samples) < 2:
        return {}
    a, b = samples[0], samples[-1]
    n = sum(1 for r in rounds if a["t"] <= r.end < b["t"])
    server = sum(b["cpu"]) - sum(a["cpu"])
    pg = pg_cpu_between(a["pg"], b["pg"])
    wall = b["t"] - a["t"]
    return {"seconds": wall, "rounds": n, "rounds_per_s": n / wall,
            "server_cpu_s": server, "pg_cpu_s": pg,
            "server_ms_per_round": server / n * 1e3 if n else 0.0,
            "pg_ms_per_round": pg / n * 1e3 if n else 0.0,
            "cores_used": (server + pg) / wall}


def summarize_rounds(rounds: list[Round], args: argparse.Namespace, never: int,
                     t0: float) -> dict[str, Any]:
    ok = [r for r in rounds if r.tag == "trusted"]
    lat = sorted(r.end - r.start for r in rounds)
    late = sorted(max(0.0, r.start - r.due) for r in rounds)
    in_time = [r for r in rounds if r.end <= t0 + args.duration]
    return {
        "needed_rounds_per_s": args.nodes / args.interval,
        "achieved_rounds_per_s": len(in_time) / args.duration,
        "trusted_rounds_per_s": sum(1 for r in in_time if r.tag == "trusted") / args.duration,
        "rounds": len(rounds), "trusted": len(ok), "due_never_started": never,
        "latency_ms": {p: percentile(lat, p) * 1e3 for p in (50, 90, 99, 100)} if lat else {},
        "lateness_s": {p: percentile(late, p) for p in (50, 90, 99, 100)} if late else {},
        "late_over_15s": sum(1 for x in late if x > GRACE),
        "not_trusted": dict(Counter(r.tag for r in rounds if r.tag != "trusted")),
        "per_replica": dict(Counter(r.replica for r in rounds)),
        "requests_per_round": sum(r.requests for r in rounds) / max(1, len(rounds)),
    }


def skew_summary(rounds: list[Round], replicas: int) -> list[dict[str, float]]:
    """Per replica: how far its clock lay outside its challenges' round trips (s)."""
    out = []
    for i in range(replicas):
        sk = [r.skew for r in rounds if r.replica == i]
        out.append({"max_ahead_s": round(max(sk, default=0.0), 3),
                    "max_behind_s": round(-min(sk, default=0.0), 3),
                    "rounds_over_1s": sum(1 for x in sk if abs(x) > 1.0)})
    return out


def summarize_memory(sampler: Sampler, since: float) -> list[dict[str, float]]:
    out = []
    for i in range(len(sampler.pids)):
        pts = [(s["t"], s["rss"][i]) for s in sampler.samples]
        steady = [(t, v) for t, v in pts if t >= since]
        vals = [v for _, v in pts] or [0.0]
        out.append({"first_mib": vals[0], "last_mib": vals[-1], "max_mib": max(vals),
                    "slope_mib_per_min_after_first_interval": slope_mib_per_min(steady),
                    "samples": len(pts), "every_5_min_mib": _every(pts, 300.0)})
    return out


def _every(pts: list[tuple[float, float]], seconds: float) -> list[float]:
    """The first sample, then the first at or after each further ``seconds`` (a memory
    curve short enough to print: flat, or still growing?)."""
    out: list[float] = []
    due = pts[0][0] if pts else 0.0
    for t, v in pts:
        if t >= due:
            out.append(round(v, 1))
            due += seconds
    return out


def summarize_probes(probes: list[Probe], replicas: int) -> dict[str, Any]:
    per: list[list[float]] = [[] for _ in range(replicas)]
    lost = [0] * replicas
    for p in probes:
        for i, v in enumerate(p.latencies):
            if v is None:
                lost[i] += 1
            else:
                per[i].append(v)
    every = sorted(v for vs in per for v in vs)
    return {"probes": len(probes), "errors": [p.error for p in probes if p.error],
            "max_ms": every[-1] * 1e3 if every else None,
            "p50_ms": percentile(every, 50) * 1e3 if every else None,
            "per_replica_max_ms": [max(v) * 1e3 if v else None for v in per],
            "lost": lost, "answers_503": sum(p.n503 for p in probes),
            "probes_detail": [{"failed_on": p.replica,
                               "ms": [None if v is None else round(v * 1e3, 1)
                                      for v in p.latencies]} for p in probes]}


# -- the run --------------------------------------------------------------------------------

def make_tpms(n: int) -> float:
    t0 = time.perf_counter()
    TPMS.extend(SimulatedTpm(ecc_ek=True) for _ in range(n + 1))  # + the revocation lane
    return time.perf_counter() - t0


def fork_generators(site: Site, args: argparse.Namespace
                    ) -> tuple[list[Any], list[Connection]]:
    ctx = mp.get_context("fork")
    procs, conns = [], []
    for p in range(args.generators):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=generator_process,
                           args=(p, args.generators, site.urls, args, child), daemon=True)
        proc.start()
        procs.append(proc)
        conns.append(parent)
    return procs, conns


def enroll_lane(site: Site) -> None:
    with httpx.Client(base_url=site.urls[0], timeout=30) as c:
        SimulatedNode("rev-lane", c, TPMS[-1]).enroll_and_activate()


def collect(conns: list[Connection], kind: str) -> list[Any]:
    out = []
    for c in conns:
        msg, body = c.recv()
        if msg != kind:
            raise SystemExit(f"generator said {msg!r}, expected {kind!r}")
        out.append(body)
    return out


def run(site: Site, args: argparse.Namespace, cluster: Any, result: dict[str, Any]) -> None:
    procs, conns = fork_generators(site, args)
    enroll_lane(site)
    enrolled = collect(conns, "enrolled")
    seconds = max(e["seconds"] for e in enrolled)
    result["enrolment"] = {"seconds": seconds, "nodes_per_s": args.nodes / seconds,
                           "errors": dict(sum((Counter(e["errors"]) for e in enrolled),
                                              Counter()))}
    print(f"# enrolled {args.nodes} nodes in {seconds:.1f} s ({args.nodes / seconds:.0f}/s), "
          f"errors {result['enrolment']['errors']}; load {os.getloadavg()}", flush=True)
    subject = pod_subject(site, cluster)
    sampler = Sampler(site)
    sampler.start()
    idle0 = sampler.sample()
    time.sleep(args.idle)  # the replicas' background work alone (followers, sweep, pool)
    idle1 = sampler.sample()
    result["idle_cores"] = (sum(idle1["cpu"]) - sum(idle0["cpu"])
                            + pg_cpu_between(idle0["pg"], idle1["pg"])) / (idle1["t"] - idle0["t"])
    t0 = time.time() + 2
    result["loadavg_at_rounds_start"] = os.getloadavg()
    for c in conns:
        c.send(t0)
    sampler.sample()
    revoker = Revoker(site, TPMS[-1], subject, t0, args)
    revoker.start()
    done = collect(conns, "done")
    revoker.stop.set()
    revoker.join()
    sampler.sample()
    sampler.stop.set()
    sampler.join()
    for p in procs:
        p.join(timeout=10)
    rounds = [r for d in done for r in d["rounds"]]
    analyse(site, args, result, sampler, revoker, rounds, t0,
            sum(d["never_started"] for d in done), sum(d["cpu"] for d in done))
    sampler.engine.dispose()


def analyse(site: Site, args: argparse.Namespace, result: dict[str, Any], sampler: Sampler,
            revoker: Revoker, rounds: list[Round], t0: float, never: int,
            gen_cpu: float) -> None:
    result["rounds"] = summarize_rounds(rounds, args, never, t0)
    checks: Counter[str] = Counter()
    stale = stale_events(site, checks)
    result["stale"] = {"events": len(stale), "failed_checks": dict(checks),
                       "nodes": len({n for n, _ in stale}),
                       "classes": dict(classify_stale(stale, rounds, args, t0))}
    gaps = sorted(FALSE_GAPS)
    result["stale"]["false_gap_s"] = {p: round(percentile(gaps, p), 2)
                                      for p in (0, 50, 100)} if gaps else {}
    result["clock_skew"] = skew_summary(rounds, len(site.urls))
    result["deadline_lease"] = {"seconds_held_by": dict(sampler.holders),
                                "changes": [(round(t - t0, 1), h)
                                            for t, h in sampler.holder_changes]}
    result["memory"] = summarize_memory(sampler, t0 + args.interval)
    result["revocation"] = summarize_probes(revoker.probes, len(site.urls))
    whole = cpu_window(sampler, rounds, t0 - 5)
    steady = cpu_window(sampler, rounds, t0 + args.interval)
    result["cpu_whole"], result["cpu_steady"] = whole, steady
    result["generator_cpu_ms_per_round"] = gen_cpu / max(1, len(rounds)) * 1e3
    basis = steady or whole
    per_round = (basis.get("server_ms_per_round", 0) + basis.get("pg_ms_per_round", 0)) / 1e3
    result["one_core_holds_nodes"] = args.interval / per_round if per_round else None
    if basis.get("rounds"):  # without the idle background, billed per round above
        marginal = (basis["cores_used"] - result["idle_cores"]) / basis["rounds_per_s"]
        result["marginal_ms_per_round"] = marginal * 1e3
        result["one_core_holds_nodes_marginal"] = (
            args.interval * (1 - result["idle_cores"]) / marginal if marginal > 0 else None)


def fmt(v: Any, unit: str = "", digits: int = 1) -> str:
    if v is None:
        return "–"
    return f"{v:,.{digits}f}{unit}" if isinstance(v, float) else f"{v}{unit}"


def report(result: dict[str, Any]) -> None:
    r, s, cpu = result["rounds"], result["stale"], result["cpu_steady"] or result["cpu_whole"]
    rows = [
        ("nodes × interval", f"{result['args']['nodes']} × {result['args']['interval']} s, "
                             f"{result['args']['replicas']} replica(s), {result['database']}"),
        ("enrolment", f"{result['enrolment']['seconds']:.1f} s "
                      f"({result['enrolment']['nodes_per_s']:.0f} nodes/s), errors "
                      f"{result['enrolment']['errors'] or 0}"),
        ("rounds/s needed / achieved (trusted)",
         f"{r['needed_rounds_per_s']:.1f} / {r['achieved_rounds_per_s']:.1f} "
         f"({r['trusted_rounds_per_s']:.1f})"),
        ("due but never started", str(r["due_never_started"])),
        ("HTTP requests per round", f"{r['requests_per_round']:.2f}"),
        ("round latency p50 / p99 / max", " / ".join(
            fmt(r["latency_ms"].get(p), " ms") for p in (50, 99, 100))),
        ("lateness p50 / p99 / max", " / ".join(
            fmt(r["lateness_s"].get(p), " s", 2) for p in (50, 99, 100))),
        ("rounds started > 15 s late", str(r["late_over_15s"])),
        ("answers not trusted", json.dumps(r["not_trusted"]) or "0"),
        ("stale events (nodes)", f"{s['events']} ({s['nodes']}): {json.dumps(s['classes'])}"),
        ("stale events by failed check", json.dumps(s["failed_checks"])),
        ("false stale: event minus last pass start (min / p50 / max)",
         " / ".join(f"{v} s" for v in s.get("false_gap_s", {}).values()) or "–"),
        ("replica clock outside the round trip (ahead / behind, rounds > 1 s)", "; ".join(
            f"+{c['max_ahead_s']} / -{abs(c['max_behind_s'])} s, {c['rounds_over_1s']}"
            for c in result["clock_skew"])),
        ("deadline lease held (s by replica)",
         json.dumps(result["deadline_lease"]["seconds_held_by"])),
        ("lease holder changes", str(result["deadline_lease"]["changes"][:8])),
        ("RSS per replica first / last / max, slope", "; ".join(
            f"{m['first_mib']:.0f} / {m['last_mib']:.0f} / {m['max_mib']:.0f} MiB, "
            f"{m['slope_mib_per_min_after_first_interval']:+.2f} MiB/min"
            for m in result["memory"])),
        ("RSS per replica every 5 min (MiB)", "; ".join(
            " → ".join(f"{v:.0f}" for v in m["every_5_min_mib"]) for m in result["memory"])),
        ("revocation max / p50 (per replica max)",
         f"{fmt(result['revocation']['max_ms'], ' ms')} / "
         f"{fmt(result['revocation']['p50_ms'], ' ms')} "
         f"({', '.join(fmt(v, ' ms') for v in result['revocation']['per_replica_max_ms'])}); "
         f"{result['revocation']['probes']} probes, lost {result['revocation']['lost']}, "
         f"503s {result['revocation']['answers_503']}"),
        ("server CPU per round (steady)", fmt(cpu.get("server_ms_per_round"), " ms", 2)),
        ("PostgreSQL backends CPU per round", fmt(cpu.get("pg_ms_per_round"), " ms", 2)),
        ("cores used by servers + backends", fmt(cpu.get("cores_used"), "", 2)),
        ("load generator CPU per round", fmt(result["generator_cpu_ms_per_round"], " ms", 2)),
        ("one core holds (nodes at the interval)", fmt(result["one_core_holds_nodes"], "", 0)),
        ("idle replicas + backends (cores)", fmt(result["idle_cores"], "", 3)),
        ("marginal CPU per round (idle taken out)",
         fmt(result.get("marginal_ms_per_round"), " ms", 2)),
        ("one core holds, idle taken out once",
         fmt(result.get("one_core_holds_nodes_marginal"), "", 0)),
    ]
    print("\n| figure | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")
    for i, log in enumerate(result.get("replica_logs", [])):
        print(f"\nreplica {i} log: {log['lines']} lines, levels {log['levels']}, "
              f"patterns {log['patterns'] or 0}")
        for msg, n in log["errors"].items():
            print(f"  {n} × {msg}")
    if result["revocation"]["errors"]:
        print(f"\nrevocation probe errors: {result['revocation']['errors']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=10_000)
    ap.add_argument("--interval", type=float, default=60.0)
    ap.add_argument("--duration", type=float, default=600.0)
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--database", default=SHARED_POSTGRES, metavar="sqlite|postgresql://…",
                    help="a PostgreSQL server to create and drop a database of the run's own "
                         f"on (default {SHARED_POSTGRES}), or sqlite")
    ap.add_argument("--generators", type=int, default=2, help="load-generator processes")
    ap.add_argument("--concurrency", type=int, default=64, help="rounds in flight per generator")
    ap.add_argument("--enroll-concurrency", type=int, default=16)
    ap.add_argument("--revocations", type=int, default=10)
    ap.add_argument("--idle", type=float, default=10.0,
                    help="seconds the replicas' idle CPU is measured before the rounds")
    ap.add_argument("--probe-ms", type=float, default=20.0)
    ap.add_argument("--server-repo", type=Path, default=None, metavar="DIR",
                    help="run the servers from this checkout (e.g. a git worktree of HEAD)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    ap.add_argument("--two-step", action="store_true",
                    help="ask for a fresh challenge every round (ignore next_challenge)")
    args = ap.parse_args()
    if args.database == "sqlite" and args.replicas != 1:
        raise SystemExit("SQLite: --replicas 1 (replicas need PostgreSQL)")
    result: dict[str, Any] = {"machine": machine(), "args": {k: str(v) if isinstance(v, Path)
                                                            else v for k, v in vars(args).items()},
                              "database": "PostgreSQL" if is_postgres(args.database) else "SQLite"}
    for k, v in result["machine"].items():
        print(f"# {k}: {v}")
    print(f"# {args.nodes + 1} simulated TPMs made in {make_tpms(args.nodes):.1f} s", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    (work / "grants.yaml").write_text(GRANTS)
    cluster = DemoCluster()
    cluster.write_jwks(work / "sa-jwks.json")
    hashes = [hashlib.sha256(t.ek_public.marshal_tpm2b()).hexdigest() for t in TPMS]
    with scratch_database(args.database) as url:
        site = Site(work, url, args.interval)
        with replicas(site, args.replicas, hashes, args.server_repo):
            print(f"# replicas {[p.pid for p in site.procs]} at {site.urls}; work dir {work}",
                  flush=True)
            run(site, args, cluster, result)
        result["replica_logs"] = site.logs
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
