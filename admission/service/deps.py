"""FastAPI dependencies of the webhook's routes: the :class:`WebhookDeps` on the app's state.

:func:`admission.service.webhook.create_webhook_app` sets ``app.state.webhook`` and includes
:data:`admission.service.webhook.router`; routes ask for the deps with the :data:`Webhook`
alias. The dependency is ``async``: it only reads the app's state, and a sync one would cost
every review a hop through the thread pool.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from admission.service.admit import WebhookDeps
from kernel.appstate import app_state


async def webhook_deps(request: Request) -> WebhookDeps:
    """The deps on ``app.state.webhook``; a clear error if the app was not wired."""
    return app_state(request, "webhook", WebhookDeps)


Webhook = Annotated[WebhookDeps, Depends(webhook_deps)]
