"""Admission benchmark: sign + push, cold and warm review latency, warm reviews/s, webhook RSS.

Run by hand from the repository root (never by pytest)::

    .venv/bin/python bench/admission/bench_webhook.py [--py-spy]

Steps (setup in :mod:`setup_env`):

1. docker-registry on loopback; a CI key and a ClusterImagePolicy trusting it.
2. **Sign + push**: ``--cold + --profile-cold + 2`` fresh images, each pushed (``push_image``)
   and signed (``sign_image``: simple-signing payload, ECDSA signature, payload/config blobs and
   the ``.sig`` manifest pushed); both timed per image. ``--cli-signs N`` also times ``umec
   sign`` as a process (what a CI step costs, interpreter start included).
3. ``umec webhook`` in its own process over HTTPS on 127.0.0.1; its idle RSS. The first review
   after start (imports, Rego compilation, first registry connection) is reported on its own
   and not counted as cold.
4. **Cold**: per fresh image, ``/mutate`` of a Pod naming it by tag (the tag is resolved at the
   registry; the JSONPatch must pin exactly the pushed digest), then ``/validate`` of the Pod
   pinned to that digest (``.sig`` manifest and payload fetched, signature verified, policy,
   Rego, SQL record; must be allowed). No cache can hit: every image, tag and digest is new.
   Webhook and registry CPU seconds are read before and after, to split the wall time.
5. **Warm** (sequential, one connection): ``/validate`` of one Pod pinned to an already
   verified digest (cache hit; each review a new pod uid, so a new SQL record), ``/mutate``
   of a Pod by a tag resolved moments ago (resolve cache), and ``/validate`` of a Deployment
   (same verification, no SQL record: shows the record's share).
6. **Throughput**: ``--clients`` processes, each with its own keep-alive TLS connection,
   post warm Pod ``/validate`` reviews for ``--duration`` seconds or ``--max-reviews`` in all,
   whichever comes first; reviews/s, per-review latency under load, webhook CPU per review.
   Then the same with a Deployment (verified alike, not recorded: the SQL record's share).
7. Webhook VmRSS / VmHWM after everything.
8. ``--variant ARGS`` runs ``serve_variant.py ARGS`` (a what-if server with one part
   swapped) instead of ``umec webhook``; ``--variant "--records sql"`` is its control.
9. ``--py-spy``: after the clean measurements, an extra cold batch (``--profile-cold``
   images) and an extra throughput run, each with py-spy attached (profiling perturbs timing,
   so profiled runs are never the reported ones).

Every answer is checked (allowed, patch pins the right digest); a benchmark that measured
denials would abort rather than print a number.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parents[1])]  # here; bench/; the repo

import spy  # noqa: E402
from benchdb import add_database_option, is_postgres, scratch_database  # noqa: E402
from benchlib import (  # noqa: E402
    LATENCY_HEADER,
    BenchFailure,
    Latency,
    ReviewClient,
    cpu_seconds,
    expect_allowed,
    print_machine,
    vm_status,
)
from setup_env import (  # noqa: E402
    SignedImage,
    Webhook,
    push_and_sign,
    registry,
    run_webhook,
    umec_sign_cli,
    write_key_and_policy,
)

from tests.support.webhook import pod_spec, review, workload  # noqa: E402

UID = "00000000-bench-uid-placeholder"


def body(kind: str, image: str, uid: str = UID) -> bytes:
    return json.dumps(review(workload(kind, pod_spec([image]), uid=uid), uid=uid)).encode()


def pinned_by_patch(answer: dict[str, Any]) -> str:
    patch = json.loads(base64.b64decode(answer["patch"]))
    values = [op["value"] for op in patch if op["op"] == "replace"]
    if len(values) != 1:
        raise BenchFailure(f"/mutate patch pins {len(values)} images: {patch}")
    return str(values[0])


def cold_review(client: ReviewClient, image: SignedImage) -> tuple[int, int]:
    """(mutate ns, validate ns) of one never-seen image; both answers checked."""
    t0 = time.perf_counter_ns()
    mutated = expect_allowed(client.post("/mutate", body("Pod", image.tag_ref)), "cold mutate")
    t1 = time.perf_counter_ns()
    pinned = pinned_by_patch(mutated)
    # The webhook keeps the tag for readability (name:tag@digest); the digest must be the one
    # the registry serves, and the name the one the pod asked for.
    if pinned not in (image.pinned, f"{image.tag_ref}@{image.digest}"):
        raise BenchFailure(f"/mutate pinned {pinned}, registry has {image.pinned}")
    t2 = time.perf_counter_ns()
    uid = str(uuid.uuid4())
    expect_allowed(client.post("/validate", body("Pod", pinned, uid)), "cold validate")
    t3 = time.perf_counter_ns()
    return t1 - t0, t3 - t2


def run_cold(hook: Webhook, images: list[SignedImage], registry_pid: int
             ) -> tuple[list[Latency], dict[str, float]]:
    client = ReviewClient(hook.port, hook.ca)
    mutate, validate, both = [], [], []
    cpu0, reg0, t0 = cpu_seconds(hook.pid), cpu_seconds(registry_pid), time.perf_counter()
    for image in images:
        m, v = cold_review(client, image)
        mutate.append(m)
        validate.append(v)
        both.append(m + v)
    wall = time.perf_counter() - t0
    cpu, reg = cpu_seconds(hook.pid) - cpu0, cpu_seconds(registry_pid) - reg0
    client.close()
    n = len(images)
    return ([Latency.of("cold /mutate (tag → registry → pin)", mutate),
             Latency.of("cold /validate (fetch .sig, verify, policy, Rego, record)", validate),
             Latency.of("**cold review: /mutate + /validate**", both)],
            {"wall ms per image": 1e3 * wall / n, "webhook CPU ms per image": 1e3 * cpu / n,
             "registry CPU ms per image": 1e3 * reg / n})


def run_warm(hook: Webhook, warm: SignedImage, count: int) -> list[Latency]:
    client = ReviewClient(hook.port, hook.ca)
    cases = [("warm /validate Pod (cache hit, new SQL record each)", "/validate",
              body("Pod", warm.pinned)),
             ("warm /mutate Pod (tag resolved moments ago)", "/mutate",
              body("Pod", warm.tag_ref)),
             ("warm /validate Deployment (cache hit, no record)", "/validate",
              body("Deployment", warm.pinned))]
    samples: dict[str, list[int]] = {name: [] for name, _, _ in cases}
    for _ in range(50):  # warm-up: connection, caches, Rego memo, allocator
        for _, path, b in cases:
            expect_allowed(client.post(path, b.replace(UID.encode(), uuid.uuid4().bytes.hex()
                                                       .encode())), "warm-up")
    # Interleaved in blocks, so a burst of load from others hits every case alike.
    for _block in range(count // 100):
        for name, path, b in cases:
            out = samples[name]
            for _ in range(100):
                req = b.replace(UID.encode(), uuid.uuid4().hex.encode())
                t0 = time.perf_counter_ns()
                expect_allowed(client.post(path, req), name)
                out.append(time.perf_counter_ns() - t0)
    client.close()
    return [Latency.of(name, s) for name, s in samples.items()]


def _client_worker(port: int, ca: str, template: bytes, worker: int, start_at: float,
                   end_at: float, max_count: int) -> tuple[int, list[int]]:
    """One load client (own process): warm up, wait for the common start, post until the
    common end or its share of the count."""
    client = ReviewClient(port, Path(ca))
    for i in range(20):
        expect_allowed(client.post("/validate", template.replace(
            UID.encode(), f"warmup-{worker}-{i}-{uuid.uuid4().hex[:8]}".encode())), "warm-up")
    while time.time() < start_at:
        time.sleep(0.001)
    lat: list[int] = []
    tag = uuid.uuid4().hex[:8]
    while len(lat) < max_count and time.time() < end_at:
        req = template.replace(UID.encode(), f"{tag}-{worker}-{len(lat)}".encode())
        t0 = time.perf_counter_ns()
        expect_allowed(client.post("/validate", req), "throughput")
        lat.append(time.perf_counter_ns() - t0)
    client.close()
    return len(lat), lat


def run_throughput(hook: Webhook, warm: SignedImage, clients: int, duration: float,
                   max_reviews: int, kind: str = "Pod") -> tuple[float, Latency, float, float]:
    """(reviews/s, latency under load, webhook CPU ms per review, elapsed s)."""
    template = body(kind, warm.pinned)
    ctx = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(clients, mp_context=ctx) as pool:
        start_at = time.time() + 3.0  # every client connected and warmed up by then
        end_at = start_at + duration
        futures = [pool.submit(_client_worker, hook.port, str(hook.ca), template, w,
                               start_at, end_at, max_reviews // clients)
                   for w in range(clients)]
        while time.time() < start_at:
            time.sleep(0.001)
        cpu0, t0 = cpu_seconds(hook.pid), time.perf_counter()
        results = [f.result() for f in futures]
        elapsed = time.perf_counter() - t0
        cpu = cpu_seconds(hook.pid) - cpu0
    total = sum(n for n, _ in results)
    lat = Latency.of(f"warm /validate {kind} under load ({clients} clients)",
                     [x for _, s in results for x in s])
    return total / elapsed, lat, 1e3 * cpu / total, elapsed


def first_review(hook: Webhook, image: SignedImage) -> Latency:
    client = ReviewClient(hook.port, hook.ca)
    m, v = cold_review(client, image)
    client.close()
    return Latency.of("first review after start (mutate + validate)", [m + v])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cold", type=int, default=200, help="fresh images for cold reviews")
    ap.add_argument("--warm", type=int, default=2000, help="warm reviews per case")
    ap.add_argument("--clients", type=int, default=4, help="concurrent load clients")
    ap.add_argument("--duration", type=float, default=15.0, help="throughput run, seconds")
    ap.add_argument("--max-reviews", type=int, default=30000, help="throughput run bound")
    ap.add_argument("--cli-signs", type=int, default=3, help="`umec sign` processes timed")
    ap.add_argument("--py-spy", action="store_true", help="profiled extra runs at the end")
    ap.add_argument("--profile-cold", type=int, default=150, help="images for profiled cold")
    ap.add_argument("--variant", default=None, metavar="ARGS",
                    help='what-if server: serve_variant.py ARGS, e.g. "--records batched"')
    ap.add_argument("--work", type=Path, default=None, help="work directory (default: tmp)")
    add_database_option(ap)
    args = ap.parse_args()
    print_machine()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-admission-"))
    work.mkdir(parents=True, exist_ok=True)
    prefix = f"bench-{uuid.uuid4().hex[:6]}"
    extra = args.profile_cold if args.py_spy else 0
    with registry(work) as reg:
        key = write_key_and_policy(work, reg.host, prefix)
        images = asyncio.run(push_and_sign(reg.host, prefix, key, args.cold + extra + 2))
        first, warm = images[0], images[1]
        cold_images, prof_images = images[2:2 + args.cold], images[2 + args.cold:]
        cli = [umec_sign_cli(im.tag_ref, work / "ci.key") for im in images[:args.cli_signs]]
        print("\n## Sign + push (docker-registry on loopback)\n")
        print(LATENCY_HEADER)
        print(Latency.of("push_image (2 layers + config + manifest)",
                         [i.push_ns for i in images]).row())
        print(Latency.of("**sign_image** (payload + signature + .sig manifest pushed)",
                         [i.sign_ns for i in images]).row())
        print(Latency.of("push + sign", [i.push_ns + i.sign_ns for i in images]).row())
        if cli:
            print(Latency.of("`umec sign` process (re-sign: reads existing .sig)", cli).row())

        variant = args.variant.split() if args.variant is not None else None
        if variant is not None:
            print(f"\n**What-if server**: `serve_variant.py {args.variant}` "
                  "instead of `umec webhook`")
        print(f"\n**Database**: {'PostgreSQL' if is_postgres(args.database) else 'SQLite'}")
        with scratch_database(args.database) as url, \
                run_webhook(work, variant=variant, database_url=url) as hook:
            idle = vm_status(hook.pid)
            firsts = first_review(hook, first)
            cold, split = run_cold(hook, cold_images, reg.process.pid)
            warm_lat = run_warm(hook, warm, args.warm)
            rps, loaded, cpu_per, elapsed = run_throughput(
                hook, warm, args.clients, args.duration, args.max_reviews)
            # The same with Deployments: verified alike, but not recorded (only Pods are).
            d_rps, d_loaded, d_cpu_per, d_elapsed = run_throughput(
                hook, warm, args.clients, args.duration, args.max_reviews, "Deployment")
            mem = vm_status(hook.pid)
            print("\n## Review latency over HTTPS on loopback (one client, sequential)\n")
            print(LATENCY_HEADER)
            for row in [firsts, *cold, *warm_lat, loaded, d_loaded]:
                print(row.row())
            print("\nCold, per image: " + ", ".join(f"{k} {v:.2f}" for k, v in split.items()))
            print(f"\n## Throughput\n\n{args.clients} client processes, {elapsed:.1f} s: "
                  f"**{rps:.0f} warm reviews/s**; webhook CPU {cpu_per:.2f} ms per review "
                  f"(→ at most {1e3 / cpu_per:.0f} reviews/s per core the webhook gets).\n"
                  f"Deployments (no SQL record), {d_elapsed:.1f} s: **{d_rps:.0f} warm "
                  f"reviews/s**; webhook CPU {d_cpu_per:.2f} ms per review "
                  f"(→ at most {1e3 / d_cpu_per:.0f}/s per core).")
            print(f"\n## Webhook memory\n\nVmRSS idle {idle['VmRSS'] / 1024:.1f} MiB, after "
                  f"the runs {mem['VmRSS'] / 1024:.1f} MiB, **VmHWM {mem['VmHWM'] / 1024:.1f}"
                  f" MiB**")
            report_goals(cold, warm_lat[0], rps, images, mem)
            if args.py_spy:
                profile(hook, work, prof_images, warm, args, reg.process.pid)


def report_goals(cold: list[Latency], warm: Latency, rps: float, images: list[SignedImage],
                 mem: dict[str, int]) -> None:
    sign_med = statistics.median(i.sign_ns for i in images) / 1e6
    rows = [("warm p99 ≤ 5 ms", f"{warm.p99:.2f} ms", warm.p99 <= 5),
            ("cold p50 ≤ 20 ms (mutate + validate)", f"{cold[2].p50:.2f} ms",
             cold[2].p50 <= 20),
            ("≥ 500 warm reviews/s", f"{rps:.0f}/s", rps >= 500),
            ("sign + push median ≤ 150 ms", f"{sign_med:.1f} ms", sign_med <= 150),
            ("webhook RSS ≤ 120 MB (VmHWM)",
             f"{mem['VmHWM'] * 1024 / 1e6:.1f} MB = {mem['VmHWM'] / 1024:.1f} MiB",
             mem["VmHWM"] * 1024 <= 120e6)]
    print("\n## Goals\n\n| goal | measured | met |\n|---|---|---|")
    for goal, got, ok in rows:
        print(f"| {goal} | {got} | {'yes' if ok else '**no**'} |")


def profile(hook: Webhook, work: Path, images: list[SignedImage], warm: SignedImage,
            args: argparse.Namespace, registry_pid: int) -> None:
    if images:
        proc = spy.start(hook.pid, work / "spy-cold.txt")
        time.sleep(1.0)  # py-spy attaches
        run_cold(hook, images, registry_pid)
        spy.stop(proc)
        print(spy.summarise(work / "spy-cold.txt", f"cold reviews ({len(images)} images)"))
    proc = spy.start(hook.pid, work / "spy-warm.txt")
    time.sleep(1.0)
    run_throughput(hook, warm, args.clients, min(args.duration, 10.0), args.max_reviews)
    spy.stop(proc)
    print(spy.summarise(work / "spy-warm.txt", "warm /validate throughput run"))


if __name__ == "__main__":
    main()
