"""Benchmark: where an attestation round's server CPU goes in-process, layer by layer (issue 15).

Run from the repo root::

    .venv/bin/python bench/http/bench_protocol_stack.py [--nodes 100 --passes 8 --trials 3]

``umec server``'s app (``build_server``, SQLite in a temporary directory) is driven straight
through ASGI: no socket, no HTTP parser, so what is measured is the app. ``--nodes`` simulated
nodes (ECC EK and AK) are enrolled and activated, then every variant runs ``--passes`` rounds
of every node (challenge → quote → evidence; every verdict must be ``trusted``), ``--trials``
times. Reported per variant: the median of the process CPU (``time.process_time``: all
threads, so the thread hand-off counts) spent serving the challenge and the evidence of a
round; the simulated TPM's quote is not counted.

Variants, each the previous one with one layer removed:

* ``as served``: the app as ``umec server`` runs it;
* ``no hand-off``: the routes call their step on the event loop instead of
  ``kernel.offload.in_thread`` (safe here only because nothing else runs);
* ``FastAPI handler``: the real endpoints as plain ``APIRoute``s at the head of the app's
  routes, served by FastAPI's own per-request handler (no hand-off either): what
  ``kernel.fastroute``'s fast path saves;
* ``Starlette routes``: the two steps as plain Starlette routes at the head of the app's
  routes (no hand-off): what FastAPI's routing and ``APIRoute`` cost beyond them;
* ``middleware only``: a bare ASGI handler behind the app's three middlewares (request ids,
  metrics, body limits): what FastAPI/Starlette's app layers cost;
* ``bare``: the bare handler alone: the protocol's own work (parsing, verifier, SQL, JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "bench" / "attest"), str(REPO / "bench")]
import bench_rounds  # noqa: E402

from tests.support.simagent import pcr_body  # noqa: E402
from tests.support.simtpm import SimulatedTpm  # noqa: E402

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
STEP = re.compile(r"^/attest/v1/nodes/([^/]+)/(challenge|evidence)$")


async def call(app: App, path: str, body: bytes = b"") -> tuple[int, bytes]:
    """One POST through ``app``; (status, body)."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5000),
             "server": ("127.0.0.1", 8000), "state": {},
             "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())]}
    sent = False
    answer: dict[str, Any] = {"body": b""}

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
        elif message["type"] == "http.response.body":
            answer["body"] += message.get("body", b"")

    await app(scope, receive, send)
    return answer["status"], answer["body"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def enrol(app: App, name: str, tpm: SimulatedTpm) -> None:
    status, raw = await call(app, "/attest/v1/nodes", json.dumps({
        "name": name, "ek_public": b64(tpm.ek_public.marshal_tpm2b()),
        "ak_public": b64(tpm.ak_public.marshal_tpm2b())}).encode())
    assert status == 200, raw
    ch = json.loads(raw)
    secret = tpm.activate_credential(base64.b64decode(ch["credential_blob"]),
                                     base64.b64decode(ch["encrypted_secret"]))
    status, raw = await call(app, f"/attest/v1/nodes/{name}/activate", json.dumps({
        "enrollment_id": ch["enrollment_id"], "secret": b64(secret)}).encode())
    assert status == 200, raw


async def one_round(app: App, name: str, tpm: SimulatedTpm) -> float:
    """CPU seconds the app spent on one round (the quote excluded)."""
    t0 = time.process_time()
    status, raw = await call(app, f"/attest/v1/nodes/{name}/challenge")
    served = time.process_time() - t0
    assert status == 200, raw
    ch = json.loads(raw)
    attest, signature, pcrs = tpm.quote(base64.b64decode(ch["nonce"]), {
        bank: frozenset(v) for bank, v in ch["selection"].items()})
    body = json.dumps({"nonce": ch["nonce"], "quote": b64(attest), "signature": b64(signature),
                       "pcrs": pcr_body(pcrs)}).encode()
    t0 = time.process_time()
    status, raw = await call(app, f"/attest/v1/nodes/{name}/evidence", body)
    served += time.process_time() - t0
    assert status == 200 and json.loads(raw)["state"] == "trusted", raw
    return served


def bare_apps(srv: Any) -> dict[str, App]:
    """The bare handler behind the app's three middlewares, and alone."""
    from attest.service import api
    from kernel.requestid import RequestIds
    from umec.app import MetricsMiddleware, server_body_policy
    from umec.http_limits import BodyLimits
    from umec.settings import Settings

    ctx = srv.attest

    async def bare(scope: dict[str, Any], receive: Any, send: Any) -> None:
        match = STEP.match(scope["path"])
        assert match is not None
        message = await receive()
        node, kind, body = match.group(1), match.group(2), message.get("body", b"")
        if kind == "challenge":
            answer = api._guarded("challenge", None, api._challenge, ctx, "127.0.0.1", node)
        else:
            answer = api._guarded("evidence", None, api._evidence, ctx, "127.0.0.1", node,
                                  api.EvidenceBody.model_validate_json(body))
        out = json.dumps(answer).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]})
        await send({"type": "http.response.body", "body": out})

    middleware = RequestIds(MetricsMiddleware(BodyLimits(
        bare, policy=server_body_policy(Settings()))))
    return {"middleware only": middleware, "bare": bare}


def head_routes(srv: Any, kind: str) -> list[Any]:
    """The two steps as routes to put at the head of the app's routes: FastAPI's own
    ``APIRoute`` with the real endpoints, or plain Starlette routes."""
    from fastapi.routing import APIRoute
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from attest.service import api
    ctx = srv.attest
    if kind == "fastapi":
        return [APIRoute("/attest/v1/nodes/{node}/challenge", api.challenge, methods=["POST"]),
                APIRoute("/attest/v1/nodes/{node}/evidence", api.evidence, methods=["POST"])]

    async def challenge(request: Request) -> JSONResponse:
        return JSONResponse(api._guarded("challenge", request, api._challenge, ctx, "127.0.0.1",
                                         request.path_params["node"]))

    async def evidence(request: Request) -> JSONResponse:
        body = api.EvidenceBody.model_validate_json(await request.body())
        return JSONResponse(api._guarded("evidence", request, api._evidence, ctx, "127.0.0.1",
                                         request.path_params["node"], body))
    return [Route("/attest/v1/nodes/{node}/challenge", challenge, methods=["POST"]),
            Route("/attest/v1/nodes/{node}/evidence", evidence, methods=["POST"])]


async def measure(app: App, nodes: list[tuple[str, SimulatedTpm]], passes: int) -> float:
    costs = sorted([await one_round(app, name, tpm) for name, tpm in nodes * passes])
    return costs[len(costs) // 2]


async def measure_with_head(srv: Any, kind: str, nodes: list[tuple[str, SimulatedTpm]],
                            passes: int) -> float:
    routes = srv.app.router.routes
    routes[0:0] = head_routes(srv, kind)
    try:
        return await measure(srv.app, nodes, passes)
    finally:
        del routes[0:2]


async def run(args: argparse.Namespace) -> None:
    from attest.service import api
    from umec.app import build_server
    from umec.settings import Settings

    srv = build_server(Settings())
    nodes = [(f"node-{i:04d}", SimulatedTpm(ecc_ek=True)) for i in range(args.nodes)]
    srv.attest.config.ek_allowlist = frozenset(
        hashlib.sha256(t.ek_public.marshal_tpm2b()).hexdigest() for _, t in nodes)
    for name, tpm in nodes:
        await enrol(srv.app, name, tpm)
        await one_round(srv.app, name, tpm)  # enrolled → trusted: the state change is done
    in_thread = getattr(api, "in_thread")  # noqa: B009 (the module's own hand-off)

    async def on_the_loop(fn: Callable[..., Any], *a: Any, **k: Any) -> Any:
        return fn(*a, **k)

    results: dict[str, list[float]] = {}
    for trial in range(args.trials):
        setattr(api, "in_thread", in_thread)  # noqa: B010
        results.setdefault("as served", []).append(await measure(srv.app, nodes, args.passes))
        setattr(api, "in_thread", on_the_loop)  # noqa: B010
        results.setdefault("no hand-off", []).append(await measure(srv.app, nodes, args.passes))
        for name, kind in (("FastAPI handler", "fastapi"), ("Starlette routes", "starlette")):
            results.setdefault(name, []).append(
                await measure_with_head(srv, kind, nodes, args.passes))
        for name, app in bare_apps(srv).items():
            results.setdefault(name, []).append(await measure(app, nodes, args.passes))
        print(f"# trial {trial + 1} (µs per round): " + ", ".join(
            f"{k} {v[-1] * 1e6:.0f}" for k, v in results.items()), flush=True)
    setattr(api, "in_thread", in_thread)  # noqa: B010
    print(f"\n## Server CPU per round in-process ({args.nodes} nodes × {args.passes} passes, "
          f"median of {args.trials} trials)\n")
    print("| variant | µs per round | ÷ as served |\n|---|---:|---:|")
    base = statistics.median(results["as served"])
    for name, values in results.items():
        value = statistics.median(values)
        print(f"| {name} | {value * 1e6:.0f} | {value / base:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--passes", type=int, default=8)
    ap.add_argument("--trials", type=int, default=3)
    args = ap.parse_args()
    bench_rounds.print_machine()
    work = Path(tempfile.mkdtemp(prefix="bench-stack-"))
    os.environ.update(bench_rounds.server_env(work, 0, bench_rounds.POLICY))
    uvloop.run(run(args))


if __name__ == "__main__":
    main()
