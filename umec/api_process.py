"""``umec api sensor|…``: a resource API as its own process, e.g. on the node with the device.

It checks tokens exactly like the APIs included in ``umec server`` do, but learns keys and
revocations over HTTP from the token service (``UMEC_TOKEN_SERVICE_URL``): the JWKS at
``/.well-known/jwks.json`` (refetched when a kid is unknown) and the revocation feed
``/oauth2/revocations`` (the whole live set), read every 250 ms. When no read has succeeded
for 1 s the guard refuses every token (503) rather than miss a revocation.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Sequence

import httpx
from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kernel.clock import clock_for
from kernel.ratelimit import RateLimiter
from mec_api.guard import AccessTokenGuard
from mec_api.tokens.feed import HttpJwks, RevocationFollower, http_source
from mec_api.tokens.revocations import RevocationList
from umec.api_wiring import build_resource_apis, resource_body_rules
from umec.db import open_database
from umec.http_limits import BodyLimits, BodyPolicy, install_error_handlers
from umec.settings import Settings


class MissingTokenService(ValueError):
    pass


def build_api_process(settings: Settings, which: Sequence[str]) -> FastAPI:
    base = settings.token_service_url.rstrip("/")
    if not base:
        raise MissingTokenService("set UMEC_TOKEN_SERVICE_URL to the umec server base URL "
                                  "(its JWKS and revocation feed protect this API)")
    verify: bool | str = str(settings.token_service_ca) if settings.token_service_ca else True
    tls: bool | ssl.SSLContext = ssl.create_default_context(cafile=verify) \
        if isinstance(verify, str) else verify
    client = httpx.AsyncClient(verify=tls, timeout=3.0)
    engine, _ = open_database(settings.resolved_database_url())
    # The token service's clock when this process shares its PostgreSQL; else this machine's
    # (tokens' times are then checked with the guard's leeway).
    clock = clock_for(engine)
    revocations = RevocationList()
    # Every 250 ms over HTTP (the SQL followers in ``umec server`` poll every 100 ms): each
    # node runs a few of these processes, and each poll is a request to the token service.
    follower = RevocationFollower(http_source(f"{base}/oauth2/revocations", client),
                                  revocations, interval=0.25,
                                  clock=lambda: clock.now().timestamp())
    guard = AccessTokenGuard(
        issuer=f"{base}/oauth2", audience=settings.token_audience,
        jwks_source=HttpJwks(f"{base}/.well-known/jwks.json", verify=verify),
        revocations=revocations, feed_applied_at=lambda: follower.applied_at,
        limiter=RateLimiter(settings.api_rate_per_second, settings.api_rate_burst),
        clock=lambda: clock.now().timestamp())
    apis = build_resource_apis(settings, engine, guard, which=which,
                               public_url=settings.public_url or base,
                               token_endpoint=f"{base}/oauth2/token")

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        import asyncio
        with contextlib.suppress(Exception):  # the feed may not answer yet: 503 until it does
            await follower.step()
        task = asyncio.create_task(follower.run())
        try:
            async with apis.running():
                yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await client.aclose()
            engine.dispose()

    app = FastAPI(title=f"µMEC API: {', '.join(which)}", lifespan=lifespan)
    app.add_middleware(BodyLimits, policy=BodyPolicy(
        rules=resource_body_rules(settings), seconds=settings.request_body_timeout_seconds))
    install_error_handlers(app, validation_status=400)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    apis.install(app)
    return app
