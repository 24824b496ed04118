"""The webhook's denials kept for the dashboard (admission.service.denials, issue 14): Rego's
deny messages attributed to their containers, the bounded SQL log, and the Admitter writing a
denial (never an admission) where it decides."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine

from admission.core.review import parse_review
from admission.service.denials import SqlDenialLog, attribute, split_check
from admission.service.models import admission_metadata
from tests.admission.test_webhook import A_KEY, APP, OTHER, make_deps
from tests.support.webhook import D1, D2, kid, pod_spec, review, workload

PATH = st.from_regex(r"spec\.(initC|c|ephemeralC)ontainers\[[0-9]{1,2}\]", fullmatch=True)
IMAGE = st.text(min_size=1, max_size=40)
CHECK = st.from_regex(r"[a-z]{1,8}(\.[a-z_]{1,8}){0,2}", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(PATH, IMAGE), min_size=1, max_size=4, unique_by=lambda c: c[0]),
       st.data())
def test_messages_go_back_to_the_containers_they_name(containers: list[tuple[str, str]],
                                                      data: st.DataObject) -> None:
    wanted: dict[str, list[tuple[str, str]]] = {p: [] for p, _ in containers}
    messages = []
    for path, image in containers:
        for _ in range(data.draw(st.integers(0, 2))):
            check, detail = data.draw(CHECK), data.draw(st.text(max_size=30))
            messages.append(f"{path}: image {image}: {check}: {detail}")
            wanted[path].append((check, detail))
    stray = data.draw(st.lists(st.text(max_size=30).filter(lambda m: not m.startswith("spec")),
                               max_size=2))
    failed, other = attribute(containers, messages + stray)
    assert failed == wanted
    assert other == stray


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=20), st.text(max_size=20)), max_size=4),
       st.lists(st.text(max_size=60), max_size=5))
def test_any_messages_are_attributed_or_kept_aside(containers: list[tuple[str, str]],
                                                   messages: list[str]) -> None:
    failed, other = attribute(containers, messages)
    assert sum(len(v) for v in failed.values()) + len(other) == len(messages)
    for check, _ in (f for v in failed.values() for f in v):
        assert check and not any(c.isspace() for c in check)


def test_split_check() -> None:
    assert split_check("digest.required: images must be pinned") == \
        ("digest.required", "images must be pinned")
    assert split_check("policy.unsatisfied (warn mode, admitted): p: r") == \
        ("policy.unsatisfied", "p: r")
    assert split_check("no check here") == ("denied", "no check here")


def _log(tmp_path: Path, keep: int = 2000) -> SqlDenialLog:
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    admission_metadata.create_all(engine)
    clock = iter(datetime(2030, 1, 1, tzinfo=UTC) + timedelta(seconds=i) for i in range(10**6))
    return SqlDenialLog(engine, now=lambda: next(clock), keep=keep)


def test_the_log_keeps_the_newest_denials(tmp_path: Path) -> None:
    log = _log(tmp_path, keep=3)
    for i in range(5):
        log.note(namespace="ns-a" if i % 2 else "ns-b", name=f"pod-{i}", kind="Pod",
                 operation="CREATE", endpoint="validate", uid=f"u{i}", containers=[],
                 message=f"m{i}")
        log.flush()  # one write (and prune) per denial
    assert [d["name"] for d in log.recent()] == ["pod-4", "pod-3", "pod-2"]
    assert [d["name"] for d in log.recent("ns-a")] == ["pod-3"]


def _validate(log: SqlDenialLog, obj: dict[str, object], uid: str) -> dict[str, object]:
    deps, *_ = make_deps(denials=log)
    req = parse_review(json.dumps(review(obj, uid=uid)).encode(), 1 << 20)
    answer = asyncio.run(deps.admitter.validate(req))
    log.flush()
    return dict(answer["response"])


def test_a_denied_review_is_kept_with_its_containers(tmp_path: Path) -> None:
    log = _log(tmp_path)
    pod = workload("Pod", pod_spec([f"{APP}@{D1}"], init=[f"{OTHER}@{D2}"]), name="bad-pod")
    assert not _validate(log, pod, "r-1")["allowed"]
    [denial] = log.recent()
    assert (denial["namespace"], denial["name"], denial["endpoint"]) == \
        ("tenant-a", "bad-pod", "validate")
    unsigned, signed = denial["containers"]  # init containers first
    assert signed["path"] == "spec.containers[0]" and signed["failed"] == []
    assert signed["digest"] == D1 and signed["signers"] == [kid(A_KEY)]
    assert unsigned["image"] == f"{OTHER}@{D2}" and unsigned["signers"] == []
    assert [f["check"] for f in unsigned["failed"]] == ["policy.unsatisfied"]
    assert "policy.unsatisfied" in denial["message"]


def test_an_admitted_review_is_not_kept(tmp_path: Path) -> None:
    log = _log(tmp_path)
    pod = workload("Pod", pod_spec([f"{APP}@{D1}"]), name="good-pod")
    assert _validate(log, pod, "r-2")["allowed"]
    assert log.recent() == []
