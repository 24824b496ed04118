"""An app guarded by the real AccessTokenGuard, following the token service's revocations
(tests/support/token_service.py): probe routes that need a scope, and the calls the guard and
DPoP tests make."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from kernel.ratelimit import RateLimiter
from mec_api.deps import requires
from mec_api.guard import AccessTokenGuard
from mec_api.principal import Principal
from mec_api.problems import install_problem_handlers
from mec_api.scopes import CAMERA_SNAPSHOT, SENSOR_READ
from mec_api.tokens.api import router as token_router
from mec_api.tokens.deps import TokenRoutes
from mec_api.tokens.feed import RevocationFollower, RingJwks, store_source
from mec_api.tokens.revocations import RevocationList
from tests.support.token_service import ISSUER, Service, build_service

PROBE = "http://testserver/probe"


@dataclass
class Guarded:
    client: TestClient
    svc: Service
    guard: AccessTokenGuard
    follower: RevocationFollower


def build(tmp_path: Path, *, rate: float | None = None,
          max_feed_age: float = 5.0) -> Guarded:
    svc = build_service(tmp_path)
    revocations = RevocationList()
    follower = RevocationFollower(store_source(svc.store), revocations, interval=0.1)
    svc.store.listeners.append(follower.poke)
    guard = AccessTokenGuard(
        issuer=ISSUER, audience="umec-apis", jwks_source=RingJwks(svc.ring),
        revocations=revocations, feed_applied_at=lambda: follower.applied_at,
        max_feed_age=max_feed_age, jwks_refresh_seconds=0.0,
        limiter=RateLimiter(rate, burst=rate) if rate else None)

    import asyncio
    import contextlib

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> Any:
        task = asyncio.create_task(follower.run())
        for _ in range(100):
            if follower.applied_at > float("-inf"):
                break
            await asyncio.sleep(0.01)
        yield
        task.cancel()

    app = FastAPI(lifespan=lifespan)
    install_problem_handlers(app)
    app.state.guard = guard
    app.state.tokens = TokenRoutes(svc.issuer, svc.store, operator_token="op")
    app.include_router(token_router)

    @app.get("/probe")
    async def probe(who: Principal = Depends(requires(SENSOR_READ))) -> dict[str, Any]:
        return {"sub": who.subject, "app": who.app_instance_id, "scopes": sorted(who.scopes)}

    @app.post("/probe")
    async def probe_post(who: Principal = Depends(requires(SENSOR_READ))) -> dict[str, str]:
        return {"sub": who.subject}

    @app.get("/camera")
    async def camera(who: Principal = Depends(requires(CAMERA_SNAPSHOT))) -> dict[str, str]:
        return {"sub": who.subject}

    return Guarded(TestClient(app), svc, guard, follower)


def call(g: Guarded, token: str | None, path: str = "/probe", scheme: str = "Bearer",
         **headers: str) -> Any:
    h = dict(headers)
    if token is not None:
        h["Authorization"] = f"{scheme} {token}"
    return g.client.get(path, headers=h)


def refused(r: Any, status: int, error: str | None) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == status and body["detail"] and "Traceback" not in r.text
    challenge = r.headers.get("www-authenticate", "")
    if status in (401, 403):
        assert challenge.startswith(("Bearer realm=", "DPoP realm=")), challenge
        assert (f'error="{error}"' in challenge) if error else ("error=" not in challenge)
