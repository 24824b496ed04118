"""The token service's one-statement read of a workload (umec.bridges.JoinedWorkloadLookup):
the pod's live admission record and its node's trust, on a real ``umec server``'s database,
SQLite and PostgreSQL (the ``site`` fixture)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event

from admission.service.records import AdmittedImage, SqlAdmissionRecords
from attest.service import registrar
from tests.support.revocation_site import Site
from tests.support.tokens import D1
from umec.bridges import JoinedWorkloadLookup


def _record(site: Site, uid: str, *, verified: bool = True) -> None:
    SqlAdmissionRecords(site.engine).record(
        namespace="tenant-a", name="app-1", uid=uid,
        images=[AdmittedImage("spec.containers[0]", f"reg/app@{D1}", D1, ("ci", "sec"))],
        verified=verified, policy_generation="g1")


def test_one_statement_reads_the_pod_and_its_node(site: Site) -> None:
    _record(site, "uid-1")
    lookup = JoinedWorkloadLookup(site.engine)
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)
    event.listen(site.engine, "before_cursor_execute", count)
    try:
        found = lookup.workload("node-a", "uid-1")
    finally:
        event.remove(site.engine, "before_cursor_execute", count)
    assert len(statements) == 1, statements
    assert found.node is not None and found.node.name == "node-a"
    assert found.node.state == "trusted" and found.node.epoch >= 1
    assert found.node.last_pass_at is not None
    assert found.pod is not None
    assert (found.pod.namespace, found.pod.name, found.pod.uid) == ("tenant-a", "app-1", "uid-1")
    assert found.pod.verified is True
    assert [(i.path, i.digest, i.signers) for i in found.pod.images] == [
        ("spec.containers[0]", D1, ("ci", "sec"))]


def test_either_half_can_be_missing(site: Site) -> None:
    _record(site, "uid-1", verified=False)
    lookup = JoinedWorkloadLookup(site.engine)
    only_pod = lookup.workload("node-nope", "uid-1")
    assert only_pod.node is None and only_pod.pod is not None
    assert only_pod.pod.verified is False
    only_node = lookup.workload("node-a", "uid-nope")
    assert only_node.pod is None and only_node.node is not None
    neither = lookup.workload("node-nope", "uid-nope")
    assert neither.pod is None and neither.node is None


def test_a_forgotten_record_and_a_changed_node_read_as_they_are_now(site: Site) -> None:
    """A forgotten pod (its tombstone stays) has no record; a node that left ``trusted`` reads
    with its new state and epoch: nothing is cached."""
    _record(site, "uid-1")
    lookup = JoinedWorkloadLookup(site.engine)
    before = lookup.workload("node-a", "uid-1")
    assert SqlAdmissionRecords(site.engine).forget(["uid-1"], "test") == ["uid-1"]
    registrar.remove(site.server.attest, "node-a")
    after = lookup.workload("node-a", "uid-1")
    assert after.pod is None
    assert before.node is not None
    assert after.node is None or (after.node.state != "trusted"
                                  and after.node.epoch > before.node.epoch)
