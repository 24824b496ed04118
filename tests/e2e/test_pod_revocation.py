"""A deleted pod loses API access (issue 10), on SQLite and PostgreSQL.

Over HTTP: a real ``umec server`` on loopback (the ``site`` fixture of
``tests/test_revocation.py``: swtpm-less simulated node, trusted) and the admission webhook as
``umec webhook`` wires it (:func:`umec.webhook_process.build_webhook`, same database), with one
stand-in: signatures come from the in-process ``FakeVerifier`` (a real registry and cosign are
``tests/test_admission_e2e.py``'s). A pod is admitted through ``/validate``, exchanges its
service-account token, calls the sensor API; then:

* its DELETE review forgets the record and revokes its tokens in one transaction: the token is
  refused within 1 s, naming the pod, and the leftover service-account token mints nothing;
* a failing revocation write rolls the forget back; the DELETE is still allowed (never block a
  deletion), counted, and the pod reconciler (:mod:`admission.service.pod_reconcile`, against
  the HTTP fake Kubernetes API in ``tests/support/fake_kube.py``) revokes once the pod is gone;
* a terminating pod's UPDATE (``deletionTimestamp`` set) forgets the record, never re-creates it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client.exceptions import ApiException
from sqlalchemy import Engine, event, select
from sqlalchemy.exc import OperationalError

from admission.service.models import admission_pods
from admission.service.pod_reconcile import forget_gone_pods, live_pod_uids
from admission.service.records import SqlAdmissionRecords
from kernel.clock import clock_for
from tests.support.fake_kube import FakeKube
from tests.support.revocation_site import REVOCATIONS, Hook
from umec.bridges import pod_revocation_writer
from umec.localserver import ServerThread
from umec.settings import Settings


def admission_records(settings: Settings, engine: Engine) -> SqlAdmissionRecords:
    """The records as ``umec`` wires them: forgetting one revokes the pod's tokens."""
    return SqlAdmissionRecords(engine, now=clock_for(engine).now, forget_writers=[
        pod_revocation_writer(settings.token_lifetime_seconds)])


def _fail_revocation_inserts(engine: Engine) -> Any:
    def fail(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO TOKEN_REVOCATIONS"):
            raise OperationalError(statement, {}, Exception("injected: disk full"))
    event.listen(engine, "before_cursor_execute", fail)
    return fail


# -- the webhook sees the DELETE -----------------------------------------------------------------

def test_deleting_a_pod_revokes_its_tokens_within_a_second(hook: Hook) -> None:
    token = hook.admit("uid-app-1")
    assert hook.site.call(token).status_code == 200

    started = time.monotonic()
    answer = hook.review("DELETE", "uid-app-1")
    assert answer["allowed"] is True
    r = hook.site.refused_within(token, 1.0)
    assert time.monotonic() - started < 1.0
    assert r.status_code == 401, r.text
    assert "uid-app-1" in r.json()["detail"] and "deleted" in r.json()["detail"]

    assert hook.records.lookup("uid-app-1") is None
    assert hook.pod_revocations() == ["uid-app-1"]
    leftover = hook.exchange("uid-app-1")
    assert leftover.status_code == 400 and leftover.json()["check"] == "admission.pod", \
        leftover.text


def test_another_pods_tokens_are_untouched(hook: Hook) -> None:
    kept = hook.admit("uid-app-2", "app-2")
    hook.admit("uid-app-1")
    assert hook.review("DELETE", "uid-app-1")["allowed"] is True
    assert hook.records.lookup("uid-app-2") is not None
    time.sleep(1.2)  # past the guard's next read
    assert hook.site.call(kept).status_code == 200
    assert hook.pod_revocations() == ["uid-app-1"]


def test_a_second_delete_review_writes_no_second_revocation(hook: Hook) -> None:
    """The graceful DELETE and the kubelet's final one: one record, one revocation."""
    hook.admit("uid-app-1")
    for _ in range(2):
        assert hook.review("DELETE", "uid-app-1")["allowed"] is True
    assert hook.pod_revocations() == ["uid-app-1"]


def test_a_dry_run_delete_forgets_nothing(hook: Hook) -> None:
    token = hook.admit("uid-app-1")
    assert hook.review("DELETE", "uid-app-1", dry_run=True)["allowed"] is True
    assert hook.records.lookup("uid-app-1") is not None and hook.pod_revocations() == []
    time.sleep(1.2)
    assert hook.site.call(token).status_code == 200


# -- the revocation commits with the forget, or neither does ------------------------------------

def test_a_failing_revocation_write_rolls_the_forget_back(hook: Hook) -> None:
    hook.admit("uid-app-1")
    engine = hook.records.engine
    fail = _fail_revocation_inserts(engine)
    try:
        with pytest.raises(OperationalError):
            hook.records.forget(["uid-app-1"], "test")
    finally:
        event.remove(engine, "before_cursor_execute", fail)
    assert hook.records.lookup("uid-app-1") is not None
    assert hook.pod_revocations() == []
    assert hook.records.forget(["uid-app-1"], "test") == ["uid-app-1"]
    assert hook.records.lookup("uid-app-1") is None and hook.pod_revocations() == ["uid-app-1"]


def test_a_failed_delete_write_still_allows_and_the_reconciler_revokes(hook: Hook) -> None:
    """The DELETE is allowed whatever the database did (counted, logged); the record and its
    token survive; once the pod is gone from the API, the reconciler forgets and revokes."""
    token = hook.admit("uid-app-1")
    engine = hook.records.engine
    fail = _fail_revocation_inserts(engine)
    try:
        assert hook.review("DELETE", "uid-app-1")["allowed"] is True
    finally:
        event.remove(engine, "before_cursor_execute", fail)
    assert hook.forget_failures() == 1.0
    assert hook.records.lookup("uid-app-1") is not None and hook.pod_revocations() == []
    assert hook.site.call(token).status_code == 200

    records = admission_records(hook.settings, hook.site.engine)
    with FakeKube() as kube:
        kube.add_pod("tenant-a", "other", "uid-other")
        gone = forget_gone_pods(records, lambda: live_pod_uids(kube.core_v1()),
                                grace_seconds=0.0, now=datetime.now(UTC) + timedelta(seconds=1))
    assert gone == ["uid-app-1"]
    r = hook.site.refused_within(token, 1.0)
    assert r.status_code == 401 and "uid-app-1" in r.json()["detail"]


# -- a terminating pod is not re-admitted --------------------------------------------------------

def test_a_terminating_pods_update_forgets_and_never_recreates_its_record(hook: Hook) -> None:
    token = hook.admit("uid-app-1")
    for _ in range(2):  # e.g. two finalizers removed one after the other
        answer = hook.review("UPDATE", "uid-app-1", deleting=True)
        assert answer["allowed"] is True  # answered as today: the images are still signed
        assert hook.records.lookup("uid-app-1") is None
    r = hook.site.refused_within(token, 1.0)
    assert r.status_code == 401 and "uid-app-1" in r.json()["detail"]
    assert hook.exchange("uid-app-1").json()["check"] == "admission.pod"
    # A live pod's UPDATE still records it (the re-review replaces the record).
    assert hook.review("UPDATE", "uid-app-2", "app-2")["allowed"] is True
    assert hook.records.lookup("uid-app-2") is not None


# -- the reconciler ------------------------------------------------------------------------------

def _record_at(hook: Hook, uid: str, at: datetime) -> None:
    SqlAdmissionRecords(hook.site.engine, now=lambda: at).record(
        namespace="tenant-a", name=uid, uid=uid, images=[], verified=True,
        policy_generation="g1")


def test_the_reconciler_forgets_gone_pods_and_keeps_live_young_and_listed_ones(
        hook: Hook) -> None:
    now = datetime.now(UTC)
    token = hook.admit("uid-gone")                 # admitted, then the pod went
    _record_at(hook, "uid-gone", now - timedelta(seconds=300))
    for uid in ("uid-live-1", "uid-live-2", "uid-live-3", "uid-terminating"):
        _record_at(hook, uid, now - timedelta(seconds=300))
    _record_at(hook, "uid-young", now - timedelta(seconds=10))  # not in the API yet
    records = admission_records(hook.settings, hook.site.engine)
    with FakeKube() as kube:
        for i in (1, 2, 3):   # three pages of one: every page counts
            kube.add_pod(f"ns-{i}", "app", f"uid-live-{i}")
        kube.add_pod("tenant-a", "dying", "uid-terminating", deleting=True)
        gone = forget_gone_pods(records, lambda: live_pod_uids(kube.core_v1(), page_size=1),
                                grace_seconds=120.0, now=now)
        lists = [r.path for r in kube.calls("GET")]
    assert gone == ["uid-gone", "uid-terminating"]
    assert len(lists) == 4 and all(p.startswith("/api/v1/pods?") for p in lists)
    assert sorted(hook.pod_revocations()) == ["uid-gone", "uid-terminating"]
    with hook.site.engine.connect() as conn:
        left = set(conn.scalars(select(admission_pods.c.uid)
                                .where(admission_pods.c.forgotten_at.is_(None))))
        tombstones = set(conn.scalars(select(admission_pods.c.uid)
                                      .where(admission_pods.c.forgotten_at.is_not(None))))
    assert left == {"uid-live-1", "uid-live-2", "uid-live-3", "uid-young"}
    assert tombstones == {"uid-gone", "uid-terminating"}
    r = hook.site.refused_within(token, 1.0)
    assert r.status_code == 401 and "uid-gone" in r.json()["detail"]


def test_a_failed_pod_listing_forgets_nothing(hook: Hook) -> None:
    """An expired continue token (or any error) midway: no partial list, nothing forgotten."""
    old = datetime.now(UTC) - timedelta(seconds=300)
    for uid in ("uid-a", "uid-b", "uid-gone"):
        _record_at(hook, uid, old)
    records = admission_records(hook.settings, hook.site.engine)
    with FakeKube() as kube:
        kube.add_pod("tenant-a", "a", "uid-a")
        kube.add_pod("tenant-a", "b", "uid-b")
        kube.expire_continue_tokens()
        with pytest.raises(ApiException) as expired:
            forget_gone_pods(records, lambda: live_pod_uids(kube.core_v1(), page_size=1),
                             grace_seconds=120.0, now=datetime.now(UTC))
        assert expired.value.status == 410
        kube.fail_next(503)
        with pytest.raises(ApiException):
            forget_gone_pods(records, lambda: live_pod_uids(kube.core_v1()),
                             grace_seconds=120.0, now=datetime.now(UTC))
    assert hook.pod_revocations() == []
    assert all(records.lookup(u) is not None for u in ("uid-a", "uid-b", "uid-gone"))


def test_a_record_dated_in_the_future_is_checked_after_the_grace(hook: Hook) -> None:
    """A record admitted before a backward clock step (dated 2 h ahead) is not skipped until
    real time catches up: the reconciler dates it now, and after the grace it is a candidate
    like any other (a missed DELETE no longer leaves its pod's tokens for 2 h). A record a
    second ahead (rounding, a replica's clock) is left as it is."""
    now = datetime.now(UTC)
    token = hook.admit("uid-gone")
    _record_at(hook, "uid-gone", now + timedelta(hours=2))
    _record_at(hook, "uid-near", now + timedelta(seconds=1))
    records = admission_records(hook.settings, hook.site.engine)
    with FakeKube() as kube:
        assert forget_gone_pods(records, lambda: live_pod_uids(kube.core_v1()),
                                grace_seconds=120.0, now=now) == []
        with hook.site.engine.connect() as conn:
            dated = dict(conn.execute(select(admission_pods.c.uid, admission_pods.c.admitted_at)
                                      .where(admission_pods.c.uid.in_(["uid-gone", "uid-near"])))
                         .all())
        assert dated["uid-gone"] < dated["uid-near"]   # re-dated now; the near one left
        later = now + timedelta(seconds=125)
        gone = forget_gone_pods(records, lambda: live_pod_uids(kube.core_v1()),
                                grace_seconds=120.0, now=later)
    assert gone == ["uid-gone", "uid-near"]
    r = hook.site.refused_within(token, 1.0)
    assert r.status_code == 401 and "uid-gone" in r.json()["detail"]


def test_no_record_old_enough_means_no_listing(hook: Hook) -> None:
    _record_at(hook, "uid-young", datetime.now(UTC))
    records = admission_records(hook.settings, hook.site.engine)
    with FakeKube() as kube:
        assert forget_gone_pods(records, lambda: live_pod_uids(kube.core_v1()),
                                grace_seconds=120.0, now=datetime.now(UTC)) == []
        assert kube.calls() == []
    assert records.lookup("uid-young") is not None


def test_umec_server_runs_the_reconciler_when_kubernetes_is_configured(
        tmp_path: Path) -> None:
    """The wiring: ``umec server`` with ``UMEC_KUBERNETES_LABELS`` reconciles on its own (here
    every 0.3 s), and the pod gone from the (fake, HTTP) API server loses its record."""
    from umec.app import build_server
    from umec.db import open_database
    with FakeKube() as kube:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": kube.url}}],
            "users": [{"name": "fake", "user": {}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}]}))
        settings = Settings(data_dir=tmp_path / "srv", kubernetes_labels=True,
                            kubeconfig=kubeconfig, kubernetes_resync_seconds=0.3)
        server = build_server(settings)
        _, sessions = open_database(settings.resolved_database_url())
        old = datetime.now(UTC) - timedelta(hours=1)
        records = SqlAdmissionRecords(sessions, now=lambda: old)
        for uid in ("uid-live", "uid-gone"):
            records.record(namespace="tenant-a", name=uid, uid=uid, images=[],
                           verified=True, policy_generation="g1")
        kube.add_pod("tenant-a", "uid-live", "uid-live")
        with ServerThread(server.app):
            deadline = time.monotonic() + 10
            while records.lookup("uid-gone") is not None:
                assert time.monotonic() < deadline, "the server never reconciled"
                time.sleep(0.1)
        assert records.lookup("uid-live") is not None
        with sessions() as s:
            kinds = s.execute(select(REVOCATIONS.c.kind, REVOCATIONS.c.pod_uid)).all()
        assert [(k, u) for k, u in kinds] == [("pod", "uid-gone")]


def test_tombstones_are_pruned_once_no_token_of_theirs_can_live(hook: Hook) -> None:
    from admission.service.records import TOMBSTONE_SECONDS
    hook.admit("uid-old")
    records = admission_records(hook.settings, hook.site.engine)
    assert records.forget(["uid-old"], "test") == ["uid-old"]
    assert records.prune_forgotten(datetime.now(UTC)) == 0          # still a tombstone
    records.record(namespace="tenant-a", name="app", uid="uid-old", images=[],
                   verified=True, policy_generation="g")           # never recorded again
    assert records.lookup("uid-old") is None
    later = datetime.now(UTC) + timedelta(seconds=TOMBSTONE_SECONDS + 1)
    assert records.prune_forgotten(later) == 1
