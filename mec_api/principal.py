"""Who is calling a resource API, as established by the resource-server guard.

Every route of every µMEC API (MEC 011, sensor, camera, inference) takes its caller from one
FastAPI dependency, ``Depends(mec_api.deps.requires(scopes.SENSOR_READ))``, which asks the guard
on ``app.state.guard``. The routes never read tokens themselves; the guard (``mec_api.guard``)
checks the access token (signature, iss/aud/exp/nbf, scope, DPoP binding, revocation) and hands
over a ``Principal``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from starlette.requests import Request


@dataclass(frozen=True)
class Principal:
    """The verified caller of one request.

    ``subject`` is the workload identity (``system:serviceaccount:<ns>:<sa>``); ``namespace`` is
    the tenant boundary; ``app_instance_id`` is the MEC application instance the token was
    issued for: MEC 011 routes under ``/applications/{appInstanceId}`` must equal it.
    """

    subject: str
    client_id: str
    namespace: str
    app_instance_id: str
    node: str
    scopes: frozenset[str]
    token_id: str

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes


class RouteGuard(Protocol):
    """What ``app.state.guard`` is: it authenticates a request and checks one scope.

    ``admit`` raises problem errors itself (401 with ``WWW-Authenticate``, 403
    ``insufficient_scope``, 503, 429); a route only sees a ``Principal`` that holds the scope it
    asked for.
    """

    async def admit(self, request: Request, scope: str) -> Principal: ...
