"""Benchmark: revocation latency and loss under concurrent token use (issue 10). Run by hand.

Run from the repo root::

    .venv/bin/python bench/tokens/bench_revocation.py [--revocations 10000] [--max-minutes 9]
        [--configs sqlite-w1,sqlite-w2,pg-w1,pg-w2] [--lanes 16] [--json out.json]

Per configuration (database SQLite or a fresh PostgreSQL database ``bench_rev_<pid>_<n>`` on
127.0.0.1:5432, dropped afterwards; ``umec server --workers 1`` or ``2``), one ``umec server``
and one ``umec api sensor`` process (its own process, following ``GET /oauth2/revocations``
over HTTP) run. ``--lanes`` lanes each own a simulated node (SimulatedNode + SimulatedTpm over
HTTP) and its pod (admission record written with SqlAdmissionRecords) and repeat a cycle until
``--revocations`` cycles are done:

1. the node attests ``trusted`` (after the first cycle: TPM reset, new trust epoch);
2. the pod exchanges its service-account token for an access token at ``/oauth2/token``;
3. two client threads (one per resource server kind) start calling ``GET /sensor/v1/tags`` with
   it every ``--pace-ms``: one on the server, one on the ``umec api`` process;
4. the node's TPM extends the application PCR 14 and the node attests: ``untrusted``. The
   revocation latency of a kind is from the failed evidence's answer to the answer of the first
   refused call (401) there (0 when the refusal came before the verdict reached the node);
5. after its first refusal each client keeps calling (at least ``--after-calls`` calls and
   ``--after-ms``): an acceptance (200) of a call sent after the first refusal's answer is a
   **flap**. A kind with no refusal within 10 s of the verdict is a **lost** revocation.

The server's calls go through a pool of keep-alive connections balanced over its worker
processes and taken round-robin, so with 2 workers successive calls of one token alternate
between workers; every answer is attributed to the PID that served it (``revlinks.py``).
503s (the guard refuses because its feed is not current: fail closed) are counted on their own.
``--background`` threads meanwhile exchange tokens for pods on other, always trusted nodes and
use them on both kinds of resource server (concurrent token use; any refusal there is counted).
Every 5 s a sampler times the feed's whole answer and, 250 ms later, its answer to a follower
naming that answer's generation (``?since=<generation>``: only the entries numbered after it,
what ``umec api`` reads).

Latency resolution: one call per ``--pace-ms`` per kind (plus the call's own time). Duration:
each configuration runs until ``--revocations`` (default 10,000) are done or ``--max-minutes``
(default 9) have passed, whichever comes first, so the default run of 4 configurations takes at
most about 40 minutes; the count done is reported. Measured on a shared 2-core machine (load
8-15): 6-8 revocations/s with 16 lanes, i.e. 3,300-4,400 in 9 minutes; 10,000 per
configuration needs ``--max-minutes 25`` there (about 100 minutes for all four).
Goal: 0 lost, 0 flaps and p99 ≤ 1 s for every configuration and kind.
"""

from __future__ import annotations

import argparse
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
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(HERE), str(REPO / "bench" / "attest"), str(REPO)]

from bench_rounds import server_process, wait_healthy  # noqa: E402
from bench_tokens import EXCHANGE, GRANTS, process_tree, tree_cpu  # noqa: E402
from benchlib import percentile, print_machine  # noqa: E402
from revlinks import Answer, Links  # noqa: E402

from admission.service.records import AdmittedImage, SqlAdmissionRecords  # noqa: E402
from tests.support.simagent import SimulatedNode  # noqa: E402
from tests.support.simtpm import SimulatedTpm  # noqa: E402
from umec.db import open_database  # noqa: E402
from umec.demo_tokens import DemoCluster  # noqa: E402
from umec.localserver import free_port  # noqa: E402

UMEC = str(REPO / ".venv" / "bin" / "umec")
DIGEST = "sha256:" + "cd" * 32
TAGS = "/sensor/v1/tags"
LOST_AFTER = 10.0
KINDS = ("server", "api")


@dataclass
class Watch:
    """What one client saw of one token on one kind of resource server during one cycle."""

    kind: str
    failing_at: float = 0.0      # perf_counter just before the failing evidence was sent
    failed_at: float = 0.0       # perf_counter when its answer (untrusted) arrived
    first_refusal: Answer | None = None
    calls: list[Answer] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def done(self, now: float, after_calls: int, after_s: float) -> bool:
        if self.stop.is_set():
            return True
        if self.first_refusal is None:
            return bool(self.failed_at) and now - self.failed_at > LOST_AFTER
        after = sum(1 for a in self.calls if a.sent > self.first_refusal.answered)
        return after >= after_calls and now - self.first_refusal.answered >= after_s


@dataclass
class Outcome:
    """The result of one revocation on one kind of resource server."""

    kind: str
    node: str
    latency: float | None                   # None: lost
    first_pid: int = 0
    flaps: list[dict[str, Any]] = field(default_factory=list)
    n503: int = 0
    early_refusals: list[dict[str, Any]] = field(default_factory=list)  # 401 before failure
    other: dict[int, int] = field(default_factory=dict)
    pid_latency: dict[int, float] = field(default_factory=dict)  # first refusal per process
    refusal_text: str = ""
    last_accept: float | None = None        # latest answer (s after the verdict) of an accepted
                                            # call sent after the verdict's answer
    last_accept_sent: float | None = None   # latest send time (s after the verdict) of one


def watch(links: Links, auth: dict[str, str], w: Watch, pace: float, after_calls: int,
          after_s: float) -> None:
    """Call the sensor API with one token until ``w`` is done (a client thread)."""
    while not w.done(time.perf_counter(), after_calls, after_s):
        a = links.get(TAGS, auth)
        w.calls.append(a)
        if a.status == 401 and w.first_refusal is None and w.failing_at \
                and a.sent >= w.failing_at:
            w.first_refusal = a
        time.sleep(pace)


def outcome(w: Watch, node: str) -> Outcome:
    """Latency, flaps, 503s and oddities of one watch, all relative to the failed verdict."""
    def rel(t: float) -> float:
        return round((t - w.failed_at) * 1e3, 2)

    first = w.first_refusal
    out = Outcome(w.kind, node, None if first is None else max(0.0, first.answered - w.failed_at),
                  first.pid if first else 0)
    if first is not None:
        out.refusal_text = first.body[:160].decode(errors="replace")
    for a in w.calls:
        if a.status == 503:
            out.n503 += 1
        elif a.status == 401 and (not w.failing_at or a.answered < w.failing_at):
            out.early_refusals.append({"pid": a.pid, "sent_ms": rel(a.sent),
                                       "body": a.body[:160].decode(errors="replace")})
        elif a.status == 401:
            out.pid_latency.setdefault(a.pid, max(0.0, a.answered - w.failed_at))
        elif a.status == 200:
            accepted(out, w, a, rel)
        else:
            out.other[a.status] = out.other.get(a.status, 0) + 1
    return out


def accepted(out: Outcome, w: Watch, a: Answer, rel: Callable[[float], float]) -> None:
    """Book an accepted call: after the verdict it extends the acceptance window; after the
    first refusal's answer it is a flap."""
    if w.failed_at and a.sent > w.failed_at:
        out.last_accept = max(out.last_accept or 0.0, a.answered - w.failed_at)
        out.last_accept_sent = max(out.last_accept_sent or 0.0, a.sent - w.failed_at)
    first = w.first_refusal
    if first is not None and a.sent > first.answered:
        out.flaps.append({"pid": a.pid, "sent_ms": rel(a.sent), "answered_ms": rel(a.answered),
                          "first_refusal_pid": first.pid,
                          "first_refusal_ms": rel(first.answered)})


class Site:
    """One configuration's processes, connection pools and pods."""

    def __init__(self, base: str, db_url: str, cluster: DemoCluster,
                 links: dict[str, Links]) -> None:
        self.base, self.cluster, self.links = base, cluster, links
        self.records = SqlAdmissionRecords(open_database(db_url)[1])

    def pod_subject(self, node: str, pod: str) -> str:
        self.records.record(namespace="tenant-a", name=pod, uid=f"uid-{pod}",
                            images=[AdmittedImage("spec.containers[0]", f"r/a@{DIGEST}", DIGEST,
                                                  ("ci",))],
                            verified=True, policy_generation="bench-revocation")
        return self.cluster.pod_token("tenant-a", "app", pod, f"uid-{pod}", node)


def exchange(client: httpx.Client, subject: str) -> dict[str, str]:
    """An access token for ``subject`` as an Authorization header (a few tries: the node's
    new trust period may not be visible to the issuer's replica yet)."""
    for _ in range(50):
        r = client.post("/oauth2/token", data={**EXCHANGE, "subject_token": subject})
        if r.status_code == 200:
            return {"Authorization": f"Bearer {r.json()['access_token']}"}
        time.sleep(0.02)
    raise RuntimeError(f"token exchange refused: {r.status_code} {r.text[:200]}")


@dataclass
class Lane:
    """One simulated node and its pod, revoked and trusted again, cycle after cycle."""

    node: SimulatedNode
    subject: str
    cycles: int = 0


def attest_trusted(lane: Lane) -> None:
    if lane.cycles:
        lane.node.tpm.reboot()  # TPM reset: PCRs back to zeros, the node can be trusted again
    verdict = lane.node.attest()
    if verdict.get("state") != "trusted":
        raise RuntimeError(f"{lane.node.name}: not trusted again: {str(verdict)[:300]}")


def one_revocation(site: Site, lane: Lane, args: argparse.Namespace) -> list[Outcome]:
    """One cycle of a lane: trusted, token in use on both kinds, failed attestation, watch."""
    attest_trusted(lane)
    auth = exchange(lane.node.client, lane.subject)
    watches = {k: Watch(k) for k in KINDS}
    threads = [threading.Thread(target=watch, args=(site.links[k], auth, w, args.pace_ms / 1e3,
                                                     args.after_calls, args.after_ms / 1e3),
                                daemon=True) for k, w in watches.items()]
    for t in threads:
        t.start()
    try:
        time.sleep(args.use_ms / 1e3)  # the token in use before the failure
        lane.node.tpm.extend(14, b"tampered application")
        failing = time.perf_counter()
        for w in watches.values():
            w.failing_at = failing
        verdict = lane.node.attest()
        failed = time.perf_counter()
        for w in watches.values():
            w.failed_at = failed
        if verdict.get("state") != "untrusted":
            raise RuntimeError(f"{lane.node.name}: expected untrusted, got {str(verdict)[:300]}")
    except BaseException:
        for w in watches.values():
            w.stop.set()
        raise
    finally:
        for t in threads:
            t.join()
    lane.cycles += 1
    return [outcome(w, lane.node.name) for w in watches.values()]


class Tally:
    """Shared counters of one configuration's run."""

    def __init__(self, total: int, max_seconds: float) -> None:
        self.total, self.started = total, 0
        self.deadline = time.monotonic() + max_seconds
        self.lock = threading.Lock()
        self.outcomes: list[Outcome] = []
        self.errors: list[str] = []
        self.background: dict[str, int] = {}

    def claim(self) -> bool:
        with self.lock:
            if self.started >= self.total or len(self.errors) > 20 \
                    or time.monotonic() > self.deadline:
                return False
            self.started += 1
            return True

    def count(self, key: str) -> None:
        with self.lock:
            self.background[key] = self.background.get(key, 0) + 1


def run_lane(site: Site, lane: Lane, args: argparse.Namespace, tally: Tally) -> None:
    while tally.claim():
        try:
            outs = one_revocation(site, lane, args)
        except (RuntimeError, httpx.HTTPError, OSError) as e:
            with tally.lock:
                tally.errors.append(f"{lane.node.name}: {type(e).__name__}: {str(e)[:300]}")
            lane.node.tpm.reboot()
            time.sleep(0.5)
            continue
        with tally.lock:
            tally.outcomes.extend(outs)


def run_background(site: Site, node: SimulatedNode, subject: str, tally: Tally,
                   stop: threading.Event, pace: float) -> None:
    """Token issuance and use by a pod whose node stays trusted; every answer should be 200."""
    last_attest = time.monotonic()
    while not stop.is_set():
        if time.monotonic() - last_attest > 30:
            node.attest()
            last_attest = time.monotonic()
        try:
            auth = exchange(node.client, subject)
        except (RuntimeError, httpx.HTTPError) as e:
            tally.count(f"exchange error {type(e).__name__}")
            continue
        tally.count("issued")
        for i in range(10):
            a = site.links[KINDS[i % 2]].get(TAGS, auth)
            tally.count(f"{KINDS[i % 2]} {a.status}")
            time.sleep(pace)


def trusted_node(base: str, name: str, tpm: SimulatedTpm) -> SimulatedNode:
    node = SimulatedNode(name, httpx.Client(base_url=base, timeout=30), tpm)
    node.enroll_and_activate()
    if node.attest().get("state") != "trusted":
        raise SystemExit(f"{name} is not trusted at start")
    return node


class Sampler(threading.Thread):
    """Every 5 s: the size of the live revocation set and how long the feed took to answer the
    whole set; then, 250 ms later (a follower's poll interval), how long it took to answer a
    follower naming that answer's generation (``?since=``: only newer entries) and how many."""

    def __init__(self, base: str) -> None:
        super().__init__(daemon=True)
        self.base, self.stop = base, threading.Event()
        self.sizes: list[int] = []
        self.times: list[float] = []
        self.loads: list[float] = []
        self.delta_times: list[float] = []
        self.delta_sizes: list[int] = []
        self.delta_whole = 0  # delta requests answered with the whole set (since unknown)

    def run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=30) as client:
            while not self.stop.wait(5):
                t0 = time.perf_counter()
                body = client.get("/oauth2/revocations").json()
                self.times.append(time.perf_counter() - t0)
                self.sizes.append(len(body.get("entries", [])))
                self.loads.append(os.getloadavg()[0])
                generation = body.get("generation")
                if isinstance(generation, int) and not self.stop.wait(0.25):
                    self.delta(client, generation)

    def delta(self, client: httpx.Client, generation: int) -> None:
        t0 = time.perf_counter()
        body = client.get("/oauth2/revocations", params={"since": generation}).json()
        self.delta_times.append(time.perf_counter() - t0)
        self.delta_sizes.append(len(body.get("entries", [])))
        self.delta_whole += body.get("since") is None


@contextlib.contextmanager
def database(kind: str, work: Path, n: int) -> Iterator[str]:
    """SQLite in the work directory, or a fresh PostgreSQL database dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{work / 'data' / 'umec.db'}"
        return
    from sqlalchemy import create_engine, text
    admin = create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/test",
                          isolation_level="AUTOCOMMIT")
    name = f"bench_rev_{os.getpid()}_{n}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def api_process(work: Path, base: str, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """``umec api sensor`` as its own process, following the server's feed over HTTP."""
    env = dict(os.environ, UMEC_DATA_DIR=str(work / "api"), UMEC_TOKEN_SERVICE_URL=base,
               UMEC_LOG_LEVEL="WARNING")
    env.pop("UMEC_DATABASE_URL", None)
    with (work / "api.log").open("wb") as log:
        proc = subprocess.Popen([UMEC, "api", "sensor", "--port", str(port)], env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_healthy(proc, f"http://127.0.0.1:{port}", work)
            yield proc
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def server_pids(pid: int, workers: int) -> list[int]:
    """The processes that serve requests: the server itself, or its uvicorn workers."""
    deadline = time.monotonic() + 30
    while True:
        tree = process_tree(pid)
        pids = [pid] if workers == 1 else [p for p in tree if p != pid and b"spawn_main"
                                           in Path(f"/proc/{p}/cmdline").read_bytes()]
        if len(pids) >= workers or time.monotonic() > deadline:
            return pids
        time.sleep(0.2)


def run_config(name: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    """One configuration: start the processes, run the lanes, summarise."""
    db_kind, workers = name.split("-w")[0], int(name.split("-w")[1])
    work = Path(tempfile.mkdtemp(prefix="bench-revocation-"))
    cluster = DemoCluster()
    total_nodes = args.lanes + args.background
    tpms = [SimulatedTpm(ecc_ek=True) for _ in range(total_nodes)]
    hashes = [hashlib.sha256(t.ek_public.marshal_tpm2b()).hexdigest() for t in tpms]
    port, api_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    (work / "grants.yaml").write_text(GRANTS)
    os.environ.update(UMEC_TOKEN_SA_JWKS_FILE=str(cluster.write_jwks(work / "jwks.json")),
                      UMEC_TOKEN_GRANTS=str(work / "grants.yaml"), UMEC_PUBLIC_URL=base,
                      UMEC_API_RATE_PER_SECOND="1000000", UMEC_API_RATE_BURST="1000000")
    with database(db_kind, work, n) as url, server_process(
            work, hashes, port, [UMEC, "server", "--workers", str(workers)],
            {"UMEC_DATABASE_URL": url if db_kind == "pg" else ""}) as server, \
            api_process(work, base, api_port) as api:
        pool = args.lanes + args.background + 2
        links = {"server": Links("127.0.0.1", port, server_pids(server.pid, workers), pool),
                 "api": Links("127.0.0.1", api_port, [api.pid], pool)}
        site = Site(base, url, cluster, links)
        print(f"# {name}: server {server.pid} workers {links['server'].pids} "
              f"(connections per worker {links['server'].spread()}), umec api {api.pid}; "
              f"work dir {work}", flush=True)
        lanes = [Lane(trusted_node(base, f"rev-{i:03d}", tpms[i]), "") for i in range(args.lanes)]
        for i, lane in enumerate(lanes):
            lane.subject = site.pod_subject(lane.node.name, f"rev-pod-{i:03d}")
        bg = [trusted_node(base, f"bg-{i:03d}", tpms[args.lanes + i])
              for i in range(args.background)]
        result = drive(site, lanes, bg, args, [server.pid, api.pid])
        result.update(config=name, workers=links["server"].pids, api_pid=api.pid,
                      spread=links["server"].spread())
        for lk in links.values():
            lk.close()
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return result


def drive(site: Site, lanes: list[Lane], bg: list[SimulatedNode], args: argparse.Namespace,
          pids: list[int]) -> dict[str, Any]:
    """Run every lane until the revocation count is reached, with background use beside."""
    tally, stop = Tally(args.revocations, args.max_minutes * 60), threading.Event()
    subjects = [site.pod_subject(n.name, f"bg-pod-{i:03d}") for i, n in enumerate(bg)]
    sampler = Sampler(site.base)
    background = [threading.Thread(target=run_background, daemon=True,
                                   args=(site, n, s, tally, stop, args.pace_ms / 1e3))
                  for n, s in zip(bg, subjects, strict=True)]
    workers = [threading.Thread(target=run_lane, args=(site, lane, args, tally))
               for lane in lanes]
    cpu0, t0 = [tree_cpu(p) for p in pids], time.perf_counter()
    for t in [sampler, *background, *workers]:
        t.start()
    progress = threading.Thread(target=report_progress, args=(tally, stop), daemon=True)
    progress.start()
    for t in workers:
        t.join()
    wall = time.perf_counter() - t0
    stop.set()
    sampler.stop.set()
    cpu = [tree_cpu(p) - c for p, c in zip(pids, cpu0, strict=True)]
    for t in background:
        t.join(timeout=10)
    return {"wall_s": wall, "outcomes": tally.outcomes, "errors": tally.errors,
            "background": tally.background, "feed_sizes": sampler.sizes,
            "feed_times": sampler.times, "loads": sampler.loads,
            "delta_times": sampler.delta_times, "delta_sizes": sampler.delta_sizes,
            "delta_whole": sampler.delta_whole, "cpu_server_s": cpu[0],
            "cpu_api_s": cpu[1], "revocations": len(tally.outcomes) // len(KINDS)}


def report_progress(tally: Tally, stop: threading.Event) -> None:
    t0 = time.monotonic()
    while not stop.wait(30):
        with tally.lock:
            done, errs = len(tally.outcomes) // len(KINDS), len(tally.errors)
        print(f"#   {time.monotonic() - t0:.0f} s: {done} revocations, {errs} errors; "
              f"load {os.getloadavg()[0]:.2f}", flush=True)


def summary_rows(r: dict[str, Any]) -> list[str]:
    """Markdown table rows of one configuration, one per resource server kind."""
    rows = []
    for kind in KINDS:
        outs = [o for o in r["outcomes"] if o.kind == kind]
        lat = sorted(o.latency for o in outs if o.latency is not None)
        lost = sum(1 for o in outs if o.latency is None)
        flaps = sum(len(o.flaps) for o in outs)
        flapped = sum(1 for o in outs if o.flaps)
        n503 = sum(o.n503 for o in outs)
        early = sum(len(o.early_refusals) for o in outs)
        pcts = (" | ".join(f"{percentile(lat, p) * 1e3:.0f}" for p in (50, 99))
                + f" | {lat[-1] * 1e3:.0f}") if lat else "- | - | -"
        label = "server worker" + ("s" if len(r["workers"]) > 1 else "") \
            if kind == "server" else "umec api (HTTP feed)"
        rows.append(f"| {r['config']} | {label} | {len(outs)} | {pcts} | {lost} | "
                    f"{flaps} ({flapped} tokens) | {n503} | {early} |")
    return rows


def slowest_worker(r: dict[str, Any]) -> str:
    """With several workers: latency until every worker that was called had refused."""
    lat = sorted(max(o.pid_latency.values()) for o in r["outcomes"]
                 if o.kind == "server" and len(o.pid_latency) > 1 and o.latency is not None)
    if not lat:
        return ""
    return (f"every worker refusing (n={len(lat)}): p50 {percentile(lat, 50) * 1e3:.0f} ms, "
            f"p99 {percentile(lat, 99) * 1e3:.0f} ms, max {lat[-1] * 1e3:.0f} ms")


def print_config(r: dict[str, Any]) -> None:
    print(f"\n## {r['config']}: {r['revocations']} revocations in {r['wall_s']:.0f} s "
          f"({r['revocations'] / r['wall_s']:.1f}/s)")
    print(HEADER)
    for row in summary_rows(r):
        print(row)
    extra = slowest_worker(r)
    if extra:
        print(f"- server, {extra}")
    print_accept_window(r)
    sizes, times = r["feed_sizes"] or [0], r["feed_times"] or [0.0]
    loads = r["loads"] or [0.0]
    print(f"- live revocation set: up to {max(sizes)} entries; feed answer (GET "
          f"/oauth2/revocations) median {sorted(times)[len(times) // 2] * 1e3:.0f} ms, max "
          f"{max(times) * 1e3:.0f} ms; load average (1 min) mean {sum(loads) / len(loads):.2f}, "
          f"max {max(loads):.2f}")
    print_delta(r)
    print(f"- CPU: server {r['cpu_server_s']:.0f} s, umec api {r['cpu_api_s']:.0f} s over "
          f"{r['wall_s']:.0f} s; server connections per worker {r['spread']}")
    print(f"- background use: {dict(sorted(r['background'].items()))}")
    others: dict[str, int] = {}
    for o in r["outcomes"]:
        for status, c in o.other.items():
            others[f"{o.kind} {status}"] = others.get(f"{o.kind} {status}", 0) + c
    if others:
        print(f"- other statuses during revocations: {others}")
    print_anomalies(r)


def print_delta(r: dict[str, Any]) -> None:
    """What a follower naming its generation (``?since=``) got: answer time and size."""
    times, sizes = sorted(r["delta_times"]), sorted(r["delta_sizes"])
    if not times:
        print("- feed with ?since=<generation>: no sample (no generation in the answers?)")
        return
    print(f"- feed with ?since=<generation> 250 ms after a whole answer (n={len(times)}): median "
          f"{percentile(times, 50) * 1e3:.0f} ms, p99 {percentile(times, 99) * 1e3:.0f} ms, "
          f"max {times[-1] * 1e3:.0f} ms; entries median {sizes[len(sizes) // 2]}, max "
          f"{sizes[-1]}; answered with the whole set {r['delta_whole']} times")


def print_accept_window(r: dict[str, Any]) -> None:
    """How long after the verdict a call sent after it was still accepted (the promise: 1 s)."""
    for kind in KINDS:
        late = sorted(o.last_accept for o in r["outcomes"]
                      if o.kind == kind and o.last_accept is not None)
        sent = sorted(o.last_accept_sent for o in r["outcomes"]
                      if o.kind == kind and o.last_accept_sent is not None)
        over = sum(1 for t in late if t > 1.0)
        top = f"{late[-1] * 1e3:.0f} ms (sent up to {sent[-1] * 1e3:.0f} ms)" if late else "-"
        print(f"- {kind}: calls sent after the verdict and still accepted: in {len(late)} "
              f"revocations, answered up to {top} after it; {over} revocations with an "
              f"acceptance answered more than 1 s after it, "
              f"{sum(1 for t in sent if t > 1.0)} sent more than 1 s after it")


def print_anomalies(r: dict[str, Any]) -> None:
    outs = r["outcomes"]
    for o in [o for o in outs if o.latency is None][:10]:
        print(f"- LOST: {o.kind} {o.node}: no refusal within {LOST_AFTER:.0f} s "
              f"(503s {o.n503}, other {o.other})")
    for o in [o for o in outs if o.flaps][:10]:
        print(f"- FLAP: {o.kind} {o.node}: first refused by pid {o.first_pid} after "
              f"{(o.latency or 0) * 1e3:.0f} ms, then accepted: {o.flaps[:4]}")
    for o in [o for o in outs if o.early_refusals][:5]:
        print(f"- refused before the failure: {o.kind} {o.node}: {o.early_refusals[:3]}")
    odd = [o for o in outs if o.latency is not None and "revoked" not in o.refusal_text]
    for o in odd[:5]:
        print(f"- first 401 not a revocation: {o.kind} {o.node}: {o.refusal_text}")
    for e in r["errors"][:10]:
        print(f"- error: {e}")


HEADER = ("| configuration | resource server | revocations | p50 ms | p99 ms | max ms | lost | "
          "flaps | 503s | 401 before failure |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="sqlite-w1,sqlite-w2,pg-w1,pg-w2",
                    help="comma-separated: sqlite-w1, sqlite-w2, pg-w1, pg-w2")
    ap.add_argument("--revocations", type=int, default=10000, help="per configuration")
    ap.add_argument("--max-minutes", type=float, default=9.0,
                    help="per configuration: start no revocation after this (the count "
                         "reported is what was done)")
    ap.add_argument("--lanes", type=int, default=16, help="nodes revoked in parallel")
    ap.add_argument("--background", type=int, default=2, help="background pods in use")
    ap.add_argument("--pace-ms", type=float, default=25.0, help="pause between calls")
    ap.add_argument("--use-ms", type=float, default=40.0, help="token use before the failure")
    ap.add_argument("--after-calls", type=int, default=5)
    ap.add_argument("--after-ms", type=float, default=300.0)
    ap.add_argument("--json", type=Path, default=None, help="write every outcome here")
    ap.add_argument("--keep", action="store_true",
                    help="keep each configuration's work directory (server and api logs)")
    args = ap.parse_args()
    print_machine()
    print(f"# {' '.join(sys.argv)}", flush=True)
    results = []
    for n, name in enumerate(args.configs.split(",")):
        r = run_config(name.strip(), n, args)
        print_config(r)
        results.append(r)
        sys.stdout.flush()
    print(f"\n## All configurations (load average now {os.getloadavg()})\n{HEADER}")
    for r in results:
        for row in summary_rows(r):
            print(row)
    if args.json is not None:
        args.json.write_text(json.dumps([{**r, "outcomes": [asdict(o) for o in r["outcomes"]]}
                                         for r in results], default=str))


if __name__ == "__main__":
    main()
