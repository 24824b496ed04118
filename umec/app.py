"""Composition root of ``umec server``: settings → database → domain services → one ASGI app."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from sqlalchemy import Engine, text
from sqlalchemy import exc as sa_exc
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from admission.service.build import AdmissionBridges
from admission.service.build import build_service as build_admission
from attest.service import faultpoints
from attest.service.api import MAX_B64
from attest.service.build import AttestBridges
from attest.service.build import build_service as build_attest
from attest.service.context import AttestContext
from attest.service.join import JoinBridge
from attest.service.metrics import FleetCollector
from attest.service.notify.event import StateChangeSink
from kernel.appstate import app_state
from kernel.clock import clock_for
from kernel.metrics_access import metrics_refusal
from kernel.requestid import RequestIds
from kernel.service import Service, running
from keys import KeyRing, load_or_create_secret
from mec_api.sensor.store import SqlSensorStore
from mec_api.service.build import MecApiBridges, TokenService
from mec_api.service.build import build_service as build_mec_api
from mec_api.tokens.api import MAX_FORM_BYTES
from mec_api.tokens.revocations import node_revocations
from umec.bridges import (
    JoinedWorkloadLookup,
    RevokeInTransaction,
    WakeFollowers,
    kubernetes_api,
    pod_revocation_writer,
)
from umec.configs import (
    admission_config,
    attest_config,
    operator_token,
    resource_body_rules,
    server_mec_api_config,
)
from umec.db import open_database
from umec.http_limits import (
    BodyLimits,
    BodyPolicy,
    BodyRule,
    error_response,
    install_error_handlers,
)
from umec.settings import Settings
from umec.ui import UiSources, build_ui

log = logging.getLogger("umec.server")

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]

REQUESTS = Counter("umec_http_requests_total", "HTTP requests", ["route", "status"])
LATENCY = Histogram("umec_http_request_seconds", "HTTP request latency", ["route"])


class MetricsMiddleware:
    """Request count and latency per route template, as plain ASGI (Starlette's
    BaseHTTPMiddleware costs a task and a stream per request)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            LATENCY.labels(route).observe(time.perf_counter() - start)
            REQUESTS.labels(route, str(status)).inc()


def server_body_policy(settings: Settings) -> BodyPolicy:
    """Body limits of ``umec server``: just above the largest legitimate body per route.

    Evidence is the largest protocol body: an event log of at most ``MAX_B64`` base64 plus a
    quote, its signature and PCR values (a few KiB). The token endpoint's forms are bounded at
    ``MAX_FORM_BYTES``, the operator's key rotation at 4 KiB. Everything else (MEC 011 JSON,
    sensor readings) fits the 1 MiB default or has its own rule from the resource APIs."""
    return BodyPolicy(
        rules=(BodyRule("/attest/v1/", MAX_B64 + 64 * 1024),
               BodyRule("/oauth2/", MAX_FORM_BYTES),
               BodyRule("/tokens/v1/", 4096),
               *resource_body_rules(settings)),
        seconds=settings.request_body_timeout_seconds)


# The database cannot be reached, dropped the connection, or the pool is exhausted: a typed
# 503 the client may retry, never a 500. Integrity and programming errors stay 500s.
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError,
    sa_exc.TimeoutError)


async def database_unavailable(request: Request, exc: Exception) -> Response:
    log.warning("database unavailable", extra={"path": request.url.path,
                                               "error": type(exc).__name__})
    return error_response(
        request.url.path, 503, "database.unavailable",
        "the database did not answer, so the request was not completed; no state changed "
        "and no token was issued",
        "Retry after the Retry-After delay; operators: check the database and the server log.",
        headers={"retry-after": "2"})


@dataclass
class Server:
    """``umec server``'s app and what tests and the CLI reach inside it."""

    app: FastAPI
    attest: AttestContext
    keys: KeyRing                    # signs attestation results
    tokens: TokenService
    services: list[Service[Any]]

    @property
    def operator_token(self) -> str:
        return self.attest.config.operator_token


def _lifespan(engine: Engine, services: list[Service[Any]]) -> Lifespan:
    """The services' start, background work and close, then the database's pool."""
    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            async with running(services):
                yield
        finally:
            engine.dispose()
    return lifespan


ops_router = APIRouter(include_in_schema=False)


@ops_router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@ops_router.get("/readyz")
def readyz(request: Request) -> Response:
    engine: Engine = request.app.state.engine
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # not ready is an answer, not a crash
        return error_response("/readyz", 503, "database.reachable",
                              f"the database does not answer ({type(exc).__name__})",
                              "Operators: check the database and the server log.")
    return JSONResponse({"status": "ready"})


@ops_router.get("/metrics")
def metrics(request: Request) -> Response:
    refusal = metrics_refusal(request, app_state(request, "metrics_token", str))
    if refusal is not None:
        return refusal
    # The process's series, then this app's fleet (attest.service.metrics, from the database).
    fleet = app_state(request, "fleet_metrics", CollectorRegistry)
    return Response(generate_latest() + generate_latest(fleet), media_type=CONTENT_TYPE_LATEST)


def _server_app(settings: Settings, engine: Engine, services: list[Service[Any]]) -> FastAPI:
    app = FastAPI(title="µMEC Trust", version="0.1.0", lifespan=_lifespan(engine, services))
    app.state.engine = engine
    app.state.metrics_token = settings.metrics_token  # GET /metrics (kernel.metrics_access)
    app.add_middleware(BodyLimits, policy=server_body_policy(settings))
    app.add_middleware(MetricsMiddleware)  # it also counts the limits' refusals
    app.add_middleware(RequestIds)  # outermost: every answer has an id and an access log line
    install_error_handlers(app, validation_status=422)
    for unavailable in DATABASE_UNAVAILABLE:
        app.add_exception_handler(unavailable, database_unavailable)
    for service in services:  # attest, then tokens and the resource APIs
        service.install(app)
    app.include_router(ops_router)
    return app


def _node_revocations(engine: Engine) -> Callable[[str], list[dict[str, Any]]]:
    def read(node: str) -> list[dict[str, Any]]:
        with engine.connect() as conn:
            return node_revocations(conn, node)
    return read


def challenge_key_path(settings: Settings) -> Path:
    """The challenge nonces' MAC key: one file, the same on every replica (a Secret)."""
    return settings.data_dir / "keys" / "challenge-key"


def join_bridge(settings: Settings, kube_api: Any) -> JoinBridge | None:
    """The k3s join (issue 13), on when UMEC_K3S_SERVER_CA is set."""
    if settings.k3s_server_ca is None:
        return None
    return JoinBridge(api=kube_api or kubernetes_api(settings.kubeconfig),
                      ca_pem=settings.k3s_server_ca.read_bytes(),
                      ttl_seconds=settings.join_token_ttl_seconds,
                      sweep_seconds=settings.join_sweep_seconds)


def build_server(settings: Settings, listeners: list[StateChangeSink] | None = None) -> Server:
    """Settings → configs; the bridges between the domains → three services → one app."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine, sessions = open_database(settings.resolved_database_url(),
                                     settings.database_max_connections)
    faultpoints.install(engine)  # fault tests only (UMEC_FAULT_KILL_AT); a no-op otherwise
    clock = clock_for(engine)  # one clock for every replica: the database's on PostgreSQL
    kube_api = kubernetes_api(settings.kubeconfig) if settings.kubernetes_labels else None
    admission = build_admission(admission_config(settings, webhook=False), AdmissionBridges(
        engine, clock.now, forget_writers=[pod_revocation_writer(settings.token_lifetime_seconds)],
        kube_api=kube_api))
    attest_cfg = attest_config(settings)
    mec_api = build_mec_api(
        server_mec_api_config(settings, attest_cfg.operator_token),
        MecApiBridges(engine, sessions, clock, workloads=JoinedWorkloadLookup(engine)))
    tokens = mec_api.parts.tokens
    assert tokens is not None  # the server config runs the token service
    ring = KeyRing.load_or_create(settings.data_dir / "keys" / "attestation-results")
    attest = build_attest(attest_cfg, AttestBridges(
        sessions, ring, clock.now, load_or_create_secret(challenge_key_path(settings)),
        listeners=[*(listeners or []), WakeFollowers(tokens.store)],
        change_writers=[RevokeInTransaction(settings.token_lifetime_seconds)],
        kube_api=kube_api, join=join_bridge(settings, kube_api)))
    services: list[Service[Any]] = [attest, admission, mec_api]
    app = _server_app(settings, engine, services)
    app.state.fleet_metrics = CollectorRegistry(auto_describe=False)
    app.state.fleet_metrics.register(FleetCollector(engine, clock.now))
    # The operator dashboard (issue 14): attest's own context, so its actions revoke and
    # notify as the API's do; the token service's node revocations for the node page.
    app.mount("/ui", build_ui(UiSources(
        attest.parts, _node_revocations(engine), admissions=admission.parts.records,
        denials=admission.parts.denials, tokens=tokens, sensors=SqlSensorStore(engine))))
    return Server(app=app, attest=attest.parts, keys=ring, tokens=tokens, services=services)


def prepare_server(settings: Settings) -> None:
    """What worker processes must not race on, done once before they start: migrations, the
    key rings, the operator token and the model export (in its own child process)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine, _ = open_database(settings.resolved_database_url())
    engine.dispose()
    KeyRing.load_or_create(settings.data_dir / "keys" / "attestation-results")
    KeyRing.load_or_create(settings.data_dir / "keys" / "access-tokens")
    load_or_create_secret(challenge_key_path(settings))
    operator_token(settings)
    if settings.inference_enabled:
        from mec_api.inference.export import ensure_onnx_model
        ensure_onnx_model(settings.model_cache_dir or settings.data_dir / "models")


def create_app() -> FastAPI:
    """The ASGI app from the environment's settings (``umec server --workers N``)."""
    from umec.logs import configure_logging
    settings = Settings()
    configure_logging(settings.log_level)
    return build_server(settings).app
