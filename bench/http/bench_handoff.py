"""Benchmark: what handing a route's work to a thread costs, per request, in-process.

Run from the repo root::

    .venv/bin/python bench/http/bench_handoff.py [--requests 5000 --trials 5]

One FastAPI app, four routes answering the same small JSON; each request is driven straight
through the ASGI app (no socket, no HTTP parser), so the figure is the route's dispatch alone:

* ``sync``: a ``def`` route; FastAPI runs it through anyio's worker threads and its telemetry
  wrapper (what the attestation routes were until session 11);
* ``starlette``: an ``async def`` route calling ``run_in_threadpool`` (anyio, no telemetry);
* ``in_thread``: an ``async def`` route calling :func:`kernel.offload.in_thread`
  (``loop.run_in_executor`` on a ``ThreadPoolExecutor``, the caller's context copied);
* ``async``: an ``async def`` route that does the work on the loop (the floor: no hand-off).

The routes run interleaved, ``--trials`` times ``--requests`` each; reported: the median CPU
time (``time.process_time``: every thread of the process) per request and its ratio to
``sync``. CPU, not wall time, because the machine is shared: waiting for a core does not count.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import uvloop
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from kernel.offload import in_thread


def work() -> dict[str, str]:
    return {"status": "ok"}


app = FastAPI()


@app.get("/sync")
def sync_route() -> dict[str, str]:
    return work()


@app.get("/starlette")
async def starlette_route() -> dict[str, str]:
    return await run_in_threadpool(work)


@app.get("/in_thread")
async def in_thread_route() -> dict[str, str]:
    return await in_thread(work)


@app.get("/async")
async def async_route() -> dict[str, str]:
    return work()


ROUTES = ("/sync", "/starlette", "/in_thread", "/async")


def _scope(path: str) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
            "query_string": b"", "root_path": "", "headers": [(b"host", b"bench")],
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80)}


async def _call(path: str) -> None:
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])
    await app(_scope(path), receive, send)
    if statuses != [200]:
        raise SystemExit(f"{path} answered {statuses}")


async def _measure(requests: int, trials: int) -> dict[str, list[float]]:
    cpu: dict[str, list[float]] = {path: [] for path in ROUTES}
    for trial in range(trials):
        order = ROUTES if trial % 2 == 0 else tuple(reversed(ROUTES))
        for path in order:
            for _ in range(200):
                await _call(path)
            start = time.process_time()
            for _ in range(requests):
                await _call(path)
            cpu[path].append((time.process_time() - start) / requests * 1e6)
    return cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--trials", type=int, default=5)
    args = ap.parse_args()
    print(f"# load average at start: {Path('/proc/loadavg').read_text().split()[:3]}")
    cpu = uvloop.run(_measure(args.requests, args.trials))
    base = statistics.median(cpu["/sync"])
    print("\n| route | CPU µs per request, each trial | median | ÷ sync |\n|---|---|---:|---:|")
    for path in ROUTES:
        median = statistics.median(cpu[path])
        trials = " ".join(f"{c:.0f}" for c in cpu[path])
        print(f"| `{path[1:]}` | {trials} | {median:.0f} | {median / base:.2f} |")


if __name__ == "__main__":
    main()
