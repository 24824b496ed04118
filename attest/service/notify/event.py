"""The node state-change event, the sink interface and what every sink shares.

When the verifier moves a node between ``enrolled``, ``trusted``, ``untrusted`` and ``stale``
(DESIGN.md, "Attestation protocol" step 5) it builds one :class:`NodeStateChanged` and hands it to
a :class:`StateChangeSink` (step 6). Sinks are adapters: a signed webhook and the Kubernetes Node
label/taint live in ``notify.webhook`` and ``notify.kube``; ``notify`` is the public facade.

Contract every sink follows:

1. ``publish`` never raises into the verifier for delivery problems: the attestation state in the
   database is authoritative and a slow or broken receiver must not stall or fail a verdict.
2. A delivery that finally fails (after its retries) is logged as a structured warning and counted
   once in ``umec_notify_failures_total{sink}``, so operators alert on the counter rather than
   grepping logs.
3. Retries use exponential backoff with full jitter (:func:`backoff_delay`) so that many nodes
   going stale at once do not hammer a receiver in lock-step.

Malformed events (unknown state, naive timestamp) are programming errors of the caller and are
rejected when the event is built, with typed errors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol, runtime_checkable

from prometheus_client import Counter

from attest.core.errors import AttestationError

# ``removed``: an operator removed or renamed the node (its last event under that name).
NODE_STATES: Final = frozenset({"enrolled", "trusted", "untrusted", "stale", "removed"})
EVENT_TYPE: Final = "node.state_changed"

# One series per sink kind ("webhook", "kubernetes", or a composite member's name); URLs and
# node names stay out of the labels to keep cardinality bounded: they are in the log line.
NOTIFY_FAILURES: Final = Counter(
    "umec_notify_failures",
    "State-change notifications that could not be delivered after all retries.",
    ["sink"],
)


class NotifyError(AttestationError):
    """A notification could not be built or configured."""

    check = "notify"
    hint = "Fix the notification configuration (webhook URLs, secret, kubeconfig) and restart."


class InvalidNodeStateEvent(NotifyError):
    """A NodeStateChanged was built with an unknown state or a timestamp without a time zone."""

    check = "notify.event"
    hint = ("Node states are enrolled, trusted, untrusted or stale and event times are UTC-aware;"
            " this is a bug in the caller building the event.")


@dataclass(frozen=True, slots=True)
class NodeStateChanged:
    """One transition of a node's attestation state (``previous`` is None on enrolment)."""

    node: str
    previous: str | None
    state: str
    reason: str
    failed_checks: tuple[str, ...]
    at: datetime
    event_id: str
    # The node's trust epoch after the change. It grows whenever a trust period ends (leaving
    # `trusted`, removal, rename), so tokens minted in an epoch below it are revoked without
    # comparing any clock (see umec.tokens_wiring.RevokeOnDistrust).
    epoch: int = 0

    def __post_init__(self) -> None:
        if self.state not in NODE_STATES:
            raise InvalidNodeStateEvent(f"state={self.state!r}")
        if self.previous is not None and self.previous not in NODE_STATES:
            raise InvalidNodeStateEvent(f"previous={self.previous!r}")
        if not self.node:
            raise InvalidNodeStateEvent("node=''")
        if not self.event_id:
            raise InvalidNodeStateEvent("event_id=''")
        if self.at.tzinfo is None or self.at.utcoffset() is None:
            raise InvalidNodeStateEvent(f"at={self.at.isoformat()} has no time zone")
        if not isinstance(self.failed_checks, tuple):
            # A list would make the frozen dataclass unhashable and mutable behind our back.
            raise InvalidNodeStateEvent(f"failed_checks={self.failed_checks!r} is not a tuple")

    def to_json(self) -> dict[str, Any]:
        """The webhook payload; ``at`` is RFC 3339 in UTC with a ``Z`` suffix."""
        at = self.at.astimezone(UTC).isoformat().replace("+00:00", "Z")
        return {
            "type": EVENT_TYPE,
            "event_id": self.event_id,
            "node": self.node,
            "previous": self.previous,
            "state": self.state,
            "reason": self.reason,
            "failed_checks": list(self.failed_checks),
            "at": at,
        }


@runtime_checkable
class StateChangeSink(Protocol):
    """Where node state changes go. Implementations must not raise for delivery failures."""

    async def publish(self, event: NodeStateChanged) -> None: ...


def backoff_delay(attempt: int, base: float, cap: float, rng: Callable[[], float]) -> float:
    """Delay before retry ``attempt`` (1-based): full jitter over ``min(cap, base * 2**(n-1))``.

    Full jitter (AWS architecture blog, "Exponential Backoff And Jitter") spreads retries of many
    senders uniformly instead of synchronising them at the same exponential steps.
    """
    ceiling = min(cap, base * (2.0 ** max(0, attempt - 1)))
    return ceiling * rng()


def sink_name(sink: object) -> str:
    """The ``sink`` label of a sink: its ``name`` attribute, else its class name."""
    name = getattr(sink, "name", None)
    return name if isinstance(name, str) and name else type(sink).__name__
