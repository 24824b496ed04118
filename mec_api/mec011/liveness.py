"""The MEC 011 liveness sweep (background work of the service side).

A service registered with ``livenessInterval`` that sends no heartbeat for two intervals goes
INACTIVE, and its subscribers hear of it. The UPDATE is conditional, so when several replicas
sweep the same database only the one that made a change announces it: no lease is needed.
"""

from __future__ import annotations

import asyncio
import logging

from mec_api.mec011.deps import Mec011Context
from mec_api.mec011.routes.service_mgmt import announce_change

log = logging.getLogger("umec.apis")


async def sweep_liveness(ctx: Mec011Context, public_base: str) -> int:
    """One round: expire overdue services and announce each change (links on
    ``public_base``). Returns how many services changed."""
    changes = await asyncio.to_thread(ctx.registry.expire_liveness, ctx.now())
    for change in changes:
        await announce_change(ctx.registry, ctx.notifier, public_base, change)
    return len(changes)


async def liveness_loop(ctx: Mec011Context, public_base: str, every: float) -> None:
    """Sweep every ``every`` seconds until cancelled; a failed round is logged and retried."""
    while True:
        await asyncio.sleep(every)
        try:
            await sweep_liveness(ctx, public_base)
        except Exception as e:  # the next sweep retries
            log.warning("MEC 011 liveness sweep failed: %s", type(e).__name__)
