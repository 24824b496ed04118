"""A stand-in for the resource-server guard in API route tests.

It maps opaque bearer strings to ``Principal``s and enforces the scope exactly as the real guard
does (401 + ``WWW-Authenticate`` when there is no known token, 403 ``insufficient_scope`` when the
scope is missing), so route tests check authorization at the HTTP level without minting JWTs.
The real guard (``mec_api.guard``) has its own tests, and the end-to-end tests run the APIs
behind it.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request

from mec_api.principal import Principal
from mec_api.problems import ProblemError, install_problem_handlers


def principal(
    namespace: str = "tenant-a",
    app_instance_id: str = "app-a",
    scopes: set[str] | frozenset[str] = frozenset(),
    node: str = "node-a",
) -> Principal:
    return Principal(
        subject=f"system:serviceaccount:{namespace}:app",
        client_id=f"{namespace}:app",
        namespace=namespace,
        app_instance_id=app_instance_id,
        node=node,
        scopes=frozenset(scopes),
        token_id=f"jti-{app_instance_id}",
    )


class StaticTokenGuard:
    def __init__(self, tokens: dict[str, Principal]) -> None:
        self.tokens = tokens

    async def admit(self, request: Request, scope: str) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        who = self.tokens.get(token) if scheme.lower() == "bearer" else None
        if who is None:
            raise ProblemError(
                401,
                "Unauthorized",
                "a valid bearer token is required",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        if scope not in who.scopes:
            raise ProblemError(
                403,
                "Forbidden",
                f"the token lacks scope {scope!r}",
                headers={
                    "WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'
                },
            )
        return who


def api_app(guard: Any, *routers: APIRouter, **state: Any) -> FastAPI:
    """An app of mec_api routers alone, wired as umec wires them: problem+json handlers,
    ``app.state.guard`` and the routers' collaborators (``mec011=…``, ``sensor=…``, …)."""
    app = FastAPI()
    install_problem_handlers(app)
    app.state.guard = guard
    for name, value in state.items():
        setattr(app.state, name, value)
    for router in routers:
        app.include_router(router)
    return app
