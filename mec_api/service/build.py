"""The mec_api service as ``umec`` serves it: :func:`build_service`.

``umec server`` runs the token service here (:class:`TokenConfig`) and includes the resource
APIs; ``umec api`` runs only resource APIs, whose guard follows a token service elsewhere over
HTTP (:class:`RemoteTokenConfig`). Either way the routers read ``app.state.guard`` and their
own collaborators (``tokens``, ``mec011``, ``sensor``, ``camera``, ``inference``), and their
error model (problem+json; 400 for malformed requests, as MEC 011 specifies) travels with them.

``bridges`` is what comes from outside mec_api: the database, the one clock of all replicas,
and for the token service what attestation and admission know (``WorkloadLookup`` from
``mec_api.tokens.trust``: the pod's admission record and its node's trust, read together).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from kernel.clock import Clock
from kernel.ratelimit import RateLimiter
from kernel.service import Service
from mec_api.guard import AccessTokenGuard
from mec_api.problems import handle_problems
from mec_api.service.apis import (
    API_NAMES,
    ApisConfig,
    InferenceConfig,
    Mec011Config,
    SensorConfig,
    add_resource_apis,
)
from mec_api.service.tokens import (
    ClusterKeysConfig,
    RemoteTokenConfig,
    TokenConfig,
    Tokens,
    TokenService,
    local_tokens,
    remote_tokens,
    token_service,
)
from mec_api.tokens.api import router as token_router
from mec_api.tokens.trust import WorkloadLookup

__all__ = [
    "API_NAMES",
    "ApisConfig",
    "ClusterKeysConfig",
    "InferenceConfig",
    "Mec011Config",
    "MecApi",
    "MecApiBridges",
    "MecApiConfig",
    "RemoteTokenConfig",
    "SensorConfig",
    "TokenConfig",
    "TokenService",
    "build_service",
]


@dataclass
class MecApiConfig:
    # Exactly one: the token service in this process, or one elsewhere to follow.
    tokens: TokenConfig | RemoteTokenConfig
    apis: ApisConfig = field(default_factory=ApisConfig)
    rate_per_second: float = 50.0          # the guard's limit per access token
    rate_burst: float = 100.0


@dataclass
class MecApiBridges:
    engine: Engine
    sessions: sessionmaker[Session]
    clock: Clock                            # the one clock of all replicas (kernel.clock)
    # The token service: were the pod's images verified, and is its node trusted now?
    workloads: WorkloadLookup | None = None


@dataclass
class MecApi:
    guard: AccessTokenGuard
    tokens: TokenService | None = None      # None in ``umec api`` (tokens come from elsewhere)


def build_service(config: MecApiConfig, bridges: MecApiBridges) -> Service[MecApi]:
    """The token service (or its remote guard) and the resource APIs ``config.apis`` names."""
    tokens = _tokens(config, bridges)
    service = Service("mec_api", MecApi(tokens.guard, tokens.service),
                      state={"guard": tokens.guard}, background=list(tokens.background),
                      on_install=[handle_problems], on_start=list(tokens.on_start),
                      on_close=list(tokens.on_close))
    if tokens.service is not None:
        service.state["tokens"] = tokens.service.routes
        service.routers.append(token_router)
    add_resource_apis(service, config.apis, bridges.engine)
    return service


def _tokens(config: MecApiConfig, bridges: MecApiBridges) -> Tokens:
    limiter = RateLimiter(config.rate_per_second, config.rate_burst)
    if isinstance(config.tokens, RemoteTokenConfig):
        return remote_tokens(config.tokens, bridges.clock, limiter)
    if bridges.workloads is None:
        raise ValueError("the token service needs the WorkloadLookup bridge")
    service = token_service(config.tokens, bridges.sessions, bridges.clock, limiter,
                            workloads=bridges.workloads)
    return local_tokens(service, bridges.engine)
