"""FastAPI dependencies every mec_api router shares: the caller, and collaborators on app.state.

The routers are module-level and hold no collaborators; the app that includes them sets
``app.state.guard`` (a :class:`~mec_api.principal.RouteGuard`, in production the
:class:`~mec_api.guard.AccessTokenGuard`) and one object per API (``app.state.mec011``,
``sensor``, ``camera``, ``inference``, ``tokens``), which each API's own ``deps.py`` reads with
:func:`app_state`. A missing one is a wiring mistake: a RuntimeError (500), never a silent
default. Dependencies are ``async def`` so FastAPI does not send them to its thread pool.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import cast

from fastapi import Request

from kernel.appstate import app_state
from mec_api.principal import Principal, RouteGuard

__all__ = ["app_state", "requires", "route_guard"]


def route_guard(request: Request) -> RouteGuard:
    guard = getattr(request.app.state, "guard", None)
    if guard is None:
        raise RuntimeError("app.state.guard is not set: the mec_api routers check every caller "
                           "with it (umec sets the AccessTokenGuard there)")
    return cast(RouteGuard, guard)


def requires(scope: str) -> Callable[[Request], Awaitable[Principal]]:
    """The dependency that admits a caller holding ``scope`` (through ``app.state.guard``)."""
    async def caller(request: Request) -> Principal:
        return await route_guard(request).admit(request, scope)
    caller.__name__ = f"requires_{scope.replace('.', '_').replace('-', '_')}"
    return caller
