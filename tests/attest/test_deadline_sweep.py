"""The deadline sweep under a mass outage (issue 15's scale run): it commits in batches, stops
within its budget, and never dates evidence recorded during a long sweep "in the future".

The 10,000-node bench on three replicas found both faults: one sweep transaction marking
thousands of nodes (an event and a token revocation each) ran for 26 s, outlived its 3 s
lease (a second replica swept too), and, having read "now" once at its start, marked 16,725
nodes that passed meanwhile ``deadline.clock_future``. Here on a database of its own, without
a server (so no background sweep races the test), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from attest.service import verifier
from attest.service.context import AttestConfig, AttestContext, NodeState
from attest.service.models import NodeRow, StateEventRow
from umec.db import open_database

START = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
INTERVAL = AttestConfig().interval_seconds + AttestConfig().stale_grace_seconds


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ctx(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AttestContext]:
    url = (f"sqlite:///{tmp_path / 'umec.db'}" if request.param == "sqlite"
           else request.getfixturevalue("pg_database"))
    engine, sessions = open_database(url)
    yield AttestContext(config=AttestConfig(), sessions=sessions, sign_result=lambda _: "",
                        now=lambda: START)
    engine.dispose()


def add_trusted(ctx: AttestContext, count: int, last_pass_at: datetime,
                prefix: str = "node") -> None:
    with ctx.sessions.begin() as session:
        for i in range(count):
            ek = f"{prefix}-{i}".encode()
            session.add(NodeRow(
                name=f"{prefix}-{i}", node_class="default", ek_public=ek,
                ek_hash=hashlib.sha256(ek).hexdigest(), ak_public=b"ak", state=NodeState.TRUSTED,
                created_at=START - timedelta(days=1), activated_at=START - timedelta(days=1),
                state_changed_at=START - timedelta(days=1), last_pass_at=last_pass_at,
                last_evidence_at=last_pass_at))


def states(ctx: AttestContext) -> dict[str, int]:
    with ctx.sessions() as s:
        return dict(s.execute(select(NodeRow.state, func.count()).group_by(NodeRow.state)).all())


def stale_events(ctx: AttestContext) -> list[tuple[str, list[str]]]:
    with ctx.sessions() as s:
        return [(r.node, list(r.failed_checks)) for r in s.execute(
            select(StateEventRow.node, StateEventRow.failed_checks)
            .where(StateEventRow.state == NodeState.STALE).order_by(StateEventRow.node))]


def test_a_mass_outage_is_marked_in_batches_within_one_sweep(
        ctx: AttestContext, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verifier, "STALE_BATCH", 3)
    add_trusted(ctx, 7, START - timedelta(seconds=INTERVAL + 5))
    published: list[int] = []
    monkeypatch.setattr(ctx, "publish", lambda events: published.append(len(events)))
    events = verifier.mark_stale_nodes(ctx)
    assert published == [3, 3, 1]  # three transactions, each published after its commit
    assert len(events) == 7 and states(ctx) == {NodeState.STALE: 7}
    assert [checks for _, checks in stale_events(ctx)] == [["deadline.missed"]] * 7


def test_a_sweep_over_its_budget_leaves_the_rest_to_the_next(
        ctx: AttestContext, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verifier, "STALE_BATCH", 3)
    monkeypatch.setattr(verifier, "SWEEP_BUDGET_SECONDS", -1.0)
    add_trusted(ctx, 7, START - timedelta(seconds=INTERVAL + 5))
    assert len(verifier.mark_stale_nodes(ctx)) == 3
    assert len(verifier.mark_stale_nodes(ctx)) == 3
    assert len(verifier.mark_stale_nodes(ctx)) == 1
    assert states(ctx) == {NodeState.STALE: 7}


def advancing(step: timedelta) -> Callable[[], datetime]:
    """A clock that moves ``step`` on at every reading: a sweep that takes long."""
    calls = [0]

    def now() -> datetime:
        calls[0] += 1
        return START + step * calls[0]
    return now


def test_evidence_recorded_during_a_long_sweep_is_not_from_the_future(
        ctx: AttestContext) -> None:
    """Nodes that passed after the sweep began (dated after its first reading of the clock)
    stay trusted: the future is judged against a fresh reading. A pass dated after every
    reading the sweep makes is still a clock step."""
    ctx.now = advancing(timedelta(seconds=5))
    add_trusted(ctx, 3, START + timedelta(seconds=8), prefix="passed-meanwhile")
    add_trusted(ctx, 1, START + timedelta(hours=2), prefix="ahead")
    events = verifier.mark_stale_nodes(ctx)
    assert [(e.node, e.failed_checks) for e in events] == [
        ("ahead-0", ("deadline.clock_future",))]
    assert states(ctx) == {NodeState.TRUSTED: 3, NodeState.STALE: 1}
