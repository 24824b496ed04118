"""FastAPI dependencies of the attestation routes: what ``umec`` wires on the app's state.

``umec`` sets ``app.state.attest`` to the :class:`AttestContext` and includes
:data:`attest.service.api.router`; routes ask for it with the :data:`AttestCtx` alias.

The dependency is ``async``: it only reads the app's state, and a sync dependency would cost
every request an extra hop through the thread pool (the routes' own work runs in a thread,
off the event loop: :mod:`attest.service.api`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from attest.service.context import AttestContext
from kernel.appstate import app_state


async def attest_context(request: Request) -> AttestContext:
    """The context ``umec`` put on ``app.state.attest``; a clear error if it did not."""
    return app_state(request, "attest", AttestContext)


AttestCtx = Annotated[AttestContext, Depends(attest_context)]
