"""The MEC 011 liveness sweep (background work of the service side: ``mec_api.service.apis``
runs :func:`sweep_liveness` as a ``kernel.periodic.PeriodicTask``).

A service registered with ``livenessInterval`` that sends no heartbeat for two intervals goes
INACTIVE, and its subscribers hear of it. The UPDATE is conditional, so when several replicas
sweep the same database only the one that made a change announces it: no lease is needed.
"""

from __future__ import annotations

import asyncio

from mec_api.mec011.deps import Mec011Context
from mec_api.mec011.routes.service_mgmt import announce_change


async def sweep_liveness(ctx: Mec011Context, public_base: str) -> int:
    """One round: expire overdue services and announce each change (links on
    ``public_base``). Returns how many services changed."""
    changes = await asyncio.to_thread(ctx.registry.expire_liveness, ctx.now())
    for change in changes:
        await announce_change(ctx.registry, ctx.notifier, public_base, change)
    return len(changes)

