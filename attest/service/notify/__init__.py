"""Node state-change notifications: the public facade.

The verifier depends only on :class:`StateChangeSink`; ``umec/`` builds the concrete sinks from
settings and wraps them in one :class:`CompositeSink`:

* :class:`WebhookSink` — HMAC-SHA256 signed POSTs (wire format in ``notify.webhook``); receivers
  use :func:`verify_webhook_signature`.
* :class:`KubernetesNodeSink` — label ``umec.io/attested`` and taint ``umec.io/untrusted`` on the
  Node (details in ``notify.kube``); :func:`kubernetes_api_from_config` builds its client.

Failure isolation: each sink already swallows and counts its own delivery failures. The composite
additionally guards against a sink that raises anyway (a bug, or a third-party sink), so one broken
sink can neither stop the others nor reach the verifier; such a failure is counted under that
sink's name in ``umec_notify_failures_total``. Sinks run concurrently: a slow webhook does not delay
tainting the Node.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from attest.service.notify.event import (
    EVENT_TYPE,
    NODE_STATES,
    NOTIFY_FAILURES,
    InvalidNodeStateEvent,
    NodeStateChanged,
    NotifyError,
    StateChangeSink,
    sink_name,
)
from attest.service.notify.webhook import (
    WebhookSecretTooShort,
    WebhookSignatureMalformed,
    WebhookSignatureMismatch,
    WebhookSink,
    WebhookTimestampStale,
    WebhookUrlInvalid,
    encode_body,
    sign_webhook,
    verify_webhook_signature,
)

# The kubernetes client takes seconds to import; load its sink only when someone asks for it.
_KUBE_NAMES = frozenset({"LABEL_KEY", "TAINT_EFFECT", "TAINT_KEY", "KubeConfigUnavailable",
                         "KubernetesNodeSink", "NodeUpdateConflicts", "kubernetes_api_from_config",
                         "plan_node_patch"})


def __getattr__(name: str) -> Any:
    if name in _KUBE_NAMES:
        from attest.service.notify import kube as notify_kube
        return getattr(notify_kube, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "EVENT_TYPE",
    "NODE_STATES",
    "NOTIFY_FAILURES",
    "CompositeSink",
    "InvalidNodeStateEvent",
    "NodeStateChanged",
    "NotifyError",
    "StateChangeSink",
    "WebhookSecretTooShort",
    "WebhookSignatureMalformed",
    "WebhookSignatureMismatch",
    "WebhookSink",
    "WebhookTimestampStale",
    "WebhookUrlInvalid",
    "encode_body",
    "sign_webhook",
    "verify_webhook_signature",
]

log = logging.getLogger(__name__)


class CompositeSink:
    """Publish to every sink concurrently; a sink that raises is logged, counted and skipped."""

    name = "composite"

    def __init__(self, sinks: Iterable[StateChangeSink]) -> None:
        self.sinks = tuple(sinks)

    async def publish(self, event: NodeStateChanged) -> None:
        await asyncio.gather(*(self._guarded(sink, event) for sink in self.sinks))

    async def _guarded(self, sink: StateChangeSink, event: NodeStateChanged) -> None:
        try:
            await sink.publish(event)
        except Exception as err:  # CancelledError is BaseException: cancellation still propagates
            label = sink_name(sink)
            NOTIFY_FAILURES.labels(sink=label).inc()
            log.warning("notification sink raised", extra={
                "notify_sink": label, "event_id": event.event_id, "node": event.node,
                "state": event.state, "error": f"{type(err).__name__}: {err}"})
