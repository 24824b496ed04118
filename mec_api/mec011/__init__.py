"""ETSI MEC 011 v2.1.1: ``mec_service_mgmt/v1`` and ``mec_app_support/v1``.

``umec`` builds the store on its database, sets ``app.state.mec011`` to
``mec011_state(...)`` and includes ``ROUTERS``; ``sweep_liveness`` is its background
work. Every route takes its caller from the resource-server guard on ``app.state.guard``; an app
acts only on its own ``/applications/{appInstanceId}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import APIRouter
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from mec_api.mec011.deps import Mec011Context, TimingConfig
from mec_api.mec011.http import Clock, utc_now
from mec_api.mec011.liveness import sweep_liveness
from mec_api.mec011.models import Mec011Base
from mec_api.mec011.notifier import CallbackNotifier, NotifierConfig
from mec_api.mec011.routes import app_support as routes_support
from mec_api.mec011.routes import service_mgmt as routes_mgmt
from mec_api.mec011.routes.app_support import notify_termination
from mec_api.mec011.routes.service_mgmt import announce_change
from mec_api.mec011.schemas.service_mgmt import (
    EndPointInfo,
    GrantType,
    OAuth2Info,
    SecurityInfo,
    TransportInfo,
    TransportType,
)
from mec_api.mec011.store.app_support import SqlAppSupport
from mec_api.mec011.store.service_mgmt import SqlServiceRegistry

__all__ = [
    "ROUTERS",
    "CallbackNotifier",
    "Mec011Base",
    "Mec011Context",
    "Mec011Options",
    "Mec011Store",
    "NotifierConfig",
    "TimingConfig",
    "announce_change",
    "mec011_state",
    "notify_termination",
    "platform_transport",
    "sweep_liveness",
]

# Service management, then application support (both read ``app.state.mec011``).
ROUTERS: tuple[APIRouter, ...] = (routes_mgmt.router, routes_support.router)


@dataclass(frozen=True)
class Mec011Store:
    registry: SqlServiceRegistry
    support: SqlAppSupport

    @classmethod
    def on(cls, sessions: sessionmaker[Session]) -> Mec011Store:
        return cls(SqlServiceRegistry(sessions), SqlAppSupport(sessions))

    @staticmethod
    def create_all(engine: Engine) -> None:
        """For tests without Alembic; servers migrate (revision 0004)."""
        Mec011Base.metadata.create_all(engine)


@dataclass(frozen=True)
class Mec011Options:
    # Where platform transports are reached (the public base URL of the µMEC APIs).
    transport_uris: list[str] = field(default_factory=list)
    timing: TimingConfig = field(default_factory=TimingConfig)
    now: Clock = utc_now


def platform_transport(token_endpoint: str, uris: list[str]) -> TransportInfo:
    """The one transport µMEC offers: REST over HTTP, OAuth 2.0 client credentials at our
    token service (a tenant app exchanges its service-account token there)."""
    return TransportInfo(
        id="umec-rest-http", name="REST", description="µMEC REST APIs behind the token service",
        type=TransportType.REST_HTTP, protocol="HTTP", version="1.1",
        endpoint=EndPointInfo(uris=uris),
        security=SecurityInfo(oauth2_info=OAuth2Info(
            grant_types=[GrantType.OAUTH2_CLIENT_CREDENTIALS], token_endpoint=token_endpoint)))


def mec011_state(store: Mec011Store, token_endpoint: str, notifier: CallbackNotifier,
                 options: Mec011Options | None = None) -> Mec011Context:
    """What ``app.state.mec011`` holds for the routers of ``ROUTERS``."""
    options = options or Mec011Options()
    return Mec011Context(
        registry=store.registry, support=store.support, notifier=notifier,
        transports=(platform_transport(token_endpoint, options.transport_uris),),
        timing=options.timing, now=options.now)
