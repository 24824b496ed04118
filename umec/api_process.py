"""``umec api sensor|…``: a resource API as its own process, e.g. on the node with the device.

It checks tokens exactly like the APIs included in ``umec server`` do, but learns keys and
revocations over HTTP from the token service (``UMEC_TOKEN_SERVICE_URL``): the JWKS at
``/.well-known/jwks.json`` (refetched when a kid is unknown) and the revocation feed
``/oauth2/revocations`` (the whole live set), read every 250 ms. When no read has succeeded
for 1 s the guard refuses every token (503) rather than miss a revocation.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kernel.clock import clock_for
from kernel.metrics_access import metrics_refusal
from kernel.requestid import RequestIds
from kernel.service import running
from mec_api.service.build import MecApiBridges, build_service
from umec.configs import api_process_mec_api_config, resource_body_rules
from umec.db import open_database
from umec.http_limits import BodyLimits, BodyPolicy, install_error_handlers
from umec.settings import Settings


class MissingTokenService(ValueError):
    pass


def build_api_process(settings: Settings, which: Sequence[str]) -> FastAPI:
    if not settings.token_service_url.rstrip("/"):
        raise MissingTokenService("set UMEC_TOKEN_SERVICE_URL to the umec server base URL "
                                  "(its JWKS and revocation feed protect this API)")
    engine, sessions = open_database(settings.resolved_database_url(),
                                     settings.database_max_connections)
    # The token service's clock when this process shares its PostgreSQL; else this machine's
    # (tokens' times are then checked with the guard's leeway).
    service = build_service(
        api_process_mec_api_config(settings, which, settings.token_service_url),
        MecApiBridges(engine, sessions, clock_for(engine)))

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            async with running([service]):
                yield
        finally:
            engine.dispose()

    app = FastAPI(title=f"µMEC API: {', '.join(which)}", lifespan=lifespan)
    app.add_middleware(BodyLimits, policy=BodyPolicy(
        rules=resource_body_rules(settings), seconds=settings.request_body_timeout_seconds))
    app.add_middleware(RequestIds)  # outermost: request ids and the access log
    install_error_handlers(app, validation_status=400)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        refusal = metrics_refusal(request, settings.metrics_token)
        if refusal is not None:
            return refusal
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    service.install(app)
    return app
