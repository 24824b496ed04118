"""What the MEC 011 routes need, as ``app.state.mec011``, and their typed dependencies."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from mec_api import scopes
from mec_api.deps import app_state, requires
from mec_api.mec011.http import Clock, own_app, utc_now
from mec_api.mec011.notifier import CallbackNotifier
from mec_api.mec011.schemas.app_support import NtpServer, TimeSourceStatus
from mec_api.mec011.schemas.service_mgmt import TransportInfo
from mec_api.mec011.store.app_support import SqlAppSupport
from mec_api.mec011.store.service_mgmt import SqlServiceRegistry
from mec_api.principal import Principal


@dataclass(frozen=True)
class TimingConfig:
    # TRACEABLE only when the operator knows the host clock is locked to UTC (NTP/PTP).
    time_source: TimeSourceStatus = TimeSourceStatus.NONTRACEABLE
    ntp_servers: list[NtpServer] = field(default_factory=list)


@dataclass(frozen=True)
class Mec011Context:
    """The stores, the callback notifier, the platform's transports, timing and the clock."""

    registry: SqlServiceRegistry
    support: SqlAppSupport
    notifier: CallbackNotifier
    transports: tuple[TransportInfo, ...] = ()
    timing: TimingConfig = field(default_factory=TimingConfig)
    now: Clock = utc_now

    def transports_by_id(self) -> dict[str, TransportInfo]:
        return {t.id: t for t in self.transports}


async def mec011_context(request: Request) -> Mec011Context:
    return app_state(request, "mec011", Mec011Context)


Mec011 = Annotated[Mec011Context, Depends(mec011_context)]
# Callers: any app holding the scope, or the app named by the path's {appInstanceId}.
ServicesReader = Annotated[Principal, Depends(requires(scopes.MEC011_SERVICES_READ))]
OwnServicesReader = Annotated[Principal, Depends(own_app(scopes.MEC011_SERVICES_READ))]
OwnServicesWriter = Annotated[Principal, Depends(own_app(scopes.MEC011_SERVICES_WRITE))]
AppSupportCaller = Annotated[Principal, Depends(requires(scopes.MEC011_APP_SUPPORT))]
OwnAppSupportCaller = Annotated[Principal, Depends(own_app(scopes.MEC011_APP_SUPPORT))]
