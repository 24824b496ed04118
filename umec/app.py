"""Composition root of ``umec server``: settings → database → domain services → one ASGI app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from cryptography import x509
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from sqlalchemy import Engine, text
from sqlalchemy import exc as sa_exc
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from attest.service import faultpoints
from attest.service.api import MAX_B64
from attest.service.api import router as attest_router
from attest.service.background import deadline_task, resync_task
from attest.service.context import AttestConfig, AttestContext
from attest.service.notify import CompositeSink
from attest.service.notify.event import StateChangeSink
from attest.service.notify.webhook import WebhookSink
from attest.service.policies import load_policy_dir
from attest.service.registrar import load_pem_bundle
from kernel.clock import clock_for
from kernel.lease import SqlLease
from keys import KeyRing, atomic_write, sign_jwt
from mec_api.tokens.api import MAX_FORM_BYTES
from mec_api.tokens.api import router as token_router
from mec_api.tokens.feed import PostgresWakeups
from umec.api_wiring import ResourceApis, build_resource_apis, resource_body_rules
from umec.db import open_database
from umec.http_limits import (
    BodyLimits,
    BodyPolicy,
    BodyRule,
    error_response,
    install_error_handlers,
)
from umec.settings import Settings
from umec.tokens_wiring import TokenService, build_token_service, public_base

log = logging.getLogger("umec.server")

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
    ``MAX_FORM_BYTES``. Everything else (MEC 011 JSON, sensor readings) fits the 1 MiB default
    or has its own rule from the resource APIs."""
    return BodyPolicy(
        rules=(BodyRule("/attest/v1/", MAX_B64 + 64 * 1024),
               BodyRule("/oauth2/", MAX_FORM_BYTES),
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
    app: FastAPI
    attest: AttestContext
    keys: KeyRing
    tokens: TokenService
    apis: ResourceApis

    @property
    def operator_token(self) -> str:
        return self.attest.config.operator_token


def _operator_token(settings: Settings) -> str:
    """The configured token, else one generated once and kept (0600) in the data directory."""
    if settings.operator_token:
        return settings.operator_token
    path = settings.data_dir / "operator-token"
    with contextlib.suppress(FileExistsError):  # another process made it first: use that one
        atomic_write(path, secrets.token_urlsafe(32).encode(), overwrite=False)
    return path.read_text().strip()


def _attest_config(settings: Settings) -> AttestConfig:
    anchors: list[x509.Certificate] = []
    intermediates: list[x509.Certificate] = []
    if settings.ek_ca_bundle is not None:
        anchors, intermediates = load_pem_bundle(settings.ek_ca_bundle.read_bytes())
    return AttestConfig(
        ek_trust_anchors=anchors, ek_intermediates=intermediates,
        ek_allowlist=frozenset(h.lower() for h in settings.ek_allowlist),
        default_node_class=settings.default_node_class,
        nonce_ttl_seconds=settings.nonce_ttl_seconds,
        interval_seconds=settings.attestation_interval_seconds,
        stale_grace_seconds=settings.stale_grace_seconds,
        result_ttl_seconds=settings.result_ttl_seconds,
        rate_per_source=settings.attest_rate_per_source,
        burst_per_source=settings.attest_burst_per_source,
        operator_token=_operator_token(settings),
        issuer=settings.public_url or f"http://{settings.listen_host}:{settings.listen_port}")


async def _pod_reconcile(ctx: AttestContext, settings: Settings, kube_api: Any) -> None:
    """The lease holder forgets the records of pods gone from the cluster (and revokes their
    tokens), every minute or every Kubernetes re-sync, whichever is more often."""
    from umec.admission_wiring import admission_records
    from umec.pod_reconcile import RECONCILE_EVERY_SECONDS, live_pod_uids, pod_reconcile_loop
    every = min(RECONCILE_EVERY_SECONDS, settings.kubernetes_resync_seconds)
    lease = SqlLease(ctx.sessions, "pod-reconcile", ttl=max(3 * every, 3.0), now=ctx.now)
    await pod_reconcile_loop(admission_records(settings, ctx.sessions),
                             lambda: live_pod_uids(kube_api), now=ctx.now, every=every,
                             acquire=lease.acquire)


def _revocation_wakeups(engine: Engine, tokens: TokenService) -> PostgresWakeups | None:
    """On PostgreSQL, every worker and replica is woken by each committed revocation."""
    if engine.dialect.name != "postgresql":
        return None
    dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    wakeups = PostgresWakeups(dsn, tokens.follower.poke)
    wakeups.start()
    return wakeups


async def _reload_loop(tokens: TokenService, every: float = 2.0) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            await asyncio.to_thread(tokens.reloader.check)
            await asyncio.to_thread(tokens.store.prune, tokens.clock.now())
            await asyncio.to_thread(tokens.admissions.prune_forgotten, tokens.clock.now())
        except Exception as e:  # keep serving with the current ring; say why
            log.warning("token key reload / revocation prune failed: %s", e)


@dataclass
class StateSinks:
    """Where attestation state changes go besides the database: webhooks, Kubernetes labels
    (with the API client the pod reconciler shares) and the token service's wake-up."""

    sinks: list[StateChangeSink]
    webhook_client: httpx.AsyncClient
    kube_sink: Any = None
    kube_api: Any = None


def _state_sinks(settings: Settings, listeners: list[StateChangeSink] | None) -> StateSinks:
    out = StateSinks(list(listeners or []), httpx.AsyncClient())
    if settings.webhook_urls:
        out.sinks.append(WebhookSink(settings.webhook_urls, settings.webhook_secret.encode(),
                                     out.webhook_client))
    if settings.kubernetes_labels:
        # Imported only when enabled: the kubernetes client costs seconds of start-up.
        from attest.service.notify.kube import KubernetesNodeSink, kubernetes_api_from_config
        out.kube_api = kubernetes_api_from_config(settings.kubeconfig,
                                                  in_cluster=settings.kubeconfig is None)
        out.kube_sink = KubernetesNodeSink(out.kube_api)
        out.sinks.append(out.kube_sink)
    return out


@dataclass
class Background:
    """The server's background work, started and stopped with the app (its lifespan)."""

    settings: Settings
    engine: Engine
    ctx: AttestContext
    tokens: TokenService
    apis: ResourceApis
    state: StateSinks

    def tasks(self) -> list[asyncio.Task[None]]:
        ctx, state, settings = self.ctx, self.state, self.settings
        tasks = [asyncio.create_task(deadline_task(ctx, settings.deadline_check_seconds).run()),
                 asyncio.create_task(self.tokens.follower.run()),
                 asyncio.create_task(_reload_loop(self.tokens))]
        if state.kube_sink is not None:
            tasks.append(asyncio.create_task(
                resync_task(ctx, state.kube_sink, settings.kubernetes_resync_seconds).run()))
        if state.kube_api is not None:  # records of pods whose DELETE review the webhook missed
            tasks.append(asyncio.create_task(_pod_reconcile(ctx, settings, state.kube_api)))
        return tasks

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: FastAPI) -> AsyncIterator[None]:
        self.ctx.loop = asyncio.get_running_loop()
        with contextlib.suppress(Exception):  # first revocations before the first request;
            await self.tokens.follower.step()  # on failure the guard answers 503 until it works
        tasks = self.tasks()
        wakeups = _revocation_wakeups(self.engine, self.tokens)
        try:
            async with self.apis.running():
                yield
        finally:
            if wakeups is not None:
                await asyncio.to_thread(wakeups.stop)
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self.state.webhook_client.aclose()
            self.engine.dispose()


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
def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def _server_app(settings: Settings, background: Background) -> FastAPI:
    app = FastAPI(title="µMEC Trust", version="0.1.0", lifespan=background.lifespan)
    app.state.engine = background.engine
    app.state.attest = background.ctx
    app.include_router(attest_router)
    app.state.tokens = background.tokens.routes
    app.include_router(token_router)
    app.add_middleware(BodyLimits, policy=server_body_policy(settings))
    app.add_middleware(MetricsMiddleware)  # outermost: it also counts the limits' refusals
    install_error_handlers(app, validation_status=422)
    for unavailable in DATABASE_UNAVAILABLE:
        app.add_exception_handler(unavailable, database_unavailable)
    app.include_router(ops_router)
    # Last: the resource APIs (guard, app.state and routers; 400 for malformed requests).
    background.apis.install(app)
    return app


def build_server(settings: Settings, listeners: list[StateChangeSink] | None = None) -> Server:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine, sessions = open_database(settings.resolved_database_url())
    faultpoints.install(engine)  # fault tests only (UMEC_FAULT_KILL_AT); a no-op otherwise
    ring = KeyRing.load_or_create(settings.data_dir / "keys" / "attestation-results")
    state = _state_sinks(settings, listeners)
    attest_config = _attest_config(settings)
    clock = clock_for(engine)  # one clock for every replica: the database's on PostgreSQL
    tokens = build_token_service(settings, sessions, attest_config.operator_token,
                                 settings.data_dir / "keys" / "access-tokens", clock)
    state.sinks.append(tokens.sink)
    apis = build_resource_apis(settings, engine, tokens.guard,
                               public_url=public_base(settings),
                               token_endpoint=tokens.issuer.config.token_endpoint)
    ctx = AttestContext(config=attest_config, sessions=sessions,
                        sign_result=lambda claims: sign_jwt(claims, ring), result_jwks=ring.jwks,
                        listeners=[CompositeSink(state.sinks)] if state.sinks else [],
                        now=clock.now, change_writers=[tokens.change_writer])
    if settings.policy_dir is not None:
        load_policy_dir(sessions, settings.policy_dir)
    app = _server_app(settings, Background(settings, engine, ctx, tokens, apis, state))
    return Server(app=app, attest=ctx, keys=ring, tokens=tokens, apis=apis)


def prepare_server(settings: Settings) -> None:
    """What worker processes must not race on, done once before they start: migrations, the
    key rings, the operator token and the model export (in its own child process)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine, _ = open_database(settings.resolved_database_url())
    engine.dispose()
    KeyRing.load_or_create(settings.data_dir / "keys" / "attestation-results")
    KeyRing.load_or_create(settings.data_dir / "keys" / "access-tokens")
    _operator_token(settings)
    if settings.inference_enabled:
        from mec_api.inference.export import ensure_onnx_model
        ensure_onnx_model(settings.model_cache_dir or settings.data_dir / "models")


def create_app() -> FastAPI:
    """The ASGI app from the environment's settings (``umec server --workers N``)."""
    from umec.logs import configure_logging
    settings = Settings()
    configure_logging(settings.log_level)
    return build_server(settings).app
