"""The fleet page answers "which node is failing and why" first (issue 14): failing nodes
sorted first, a line per failing node with its first failed check and what to do, and two
charts: evidence rounds per minute (this process's ring, fed where the rounds counter is
incremented) and failed checks by type (the nodes' last verdicts). Against a real server."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.service.metrics import MinuteCounts
from tests.support.attack_env import Env, running_env, trusted
from tests.umec.test_dashboard_http import login


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(0, 10_000), max_size=80), st.integers(1, 30), st.floats(0, 3000))
def test_minute_counts_are_the_events_of_each_recent_minute(
        times: list[float], minutes: int, later: float) -> None:
    ring = MinuteCounts(minutes)
    for t in sorted(times):
        ring.add(t)
    now = max(times, default=0.0) + later
    series = ring.series(now)
    assert len(series) == minutes and series[-1][0] == int(now // 60) * 60
    expected = Counter(int(t // 60) * 60 for t in times)
    assert series == [(start, expected.get(start, 0)) for start, _ in series]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with running_env(tmp_path_factory.mktemp("fleet"), "") as e:
        yield e


def test_failing_nodes_first_with_why_and_charts(env: Env) -> None:
    trusted(env, "aa-fine")
    bad = trusted(env, "zz-tampered")
    bad.tpm.extend(14, b"a changed application")
    assert bad.attest()["state"] == "untrusted"
    client, _ = login(str(env.client.base_url), env.server.operator_token)
    page = client.get("/ui/").text
    names = re.findall(r'<tr data-node="([^"]+)"', page)
    assert names[0] == "zz-tampered" and "aa-fine" in names       # failing first, not by name
    box = re.search(r'<div class="attention" id="fleet-attention">(.*?)</div>', page, re.S)
    assert box is not None, page[:2000]
    assert "1 of 2 nodes failing" in box.group(1)
    line = re.sub(r"<[^>]+>", "", box.group(1))
    assert re.search(r"zz-tampered is untrusted policy\.pcr_value what to do: \S", line), line
    assert "aa-fine" not in box.group(1)
    charts = re.search(r'id="fleet-charts">(.*)', page, re.S)
    assert charts is not None
    rounds = re.search(r'<figure class="chart chart-rounds">(.*?)</figure>', charts.group(1),
                       re.S)
    assert rounds is not None and "this server process only" in rounds.group(1)
    counts = [int(n) for n in re.findall(r"<title>\d\d:\d\d: (\d+)</title>", rounds.group(1))]
    assert len(counts) == 60 and sum(counts) >= 3                  # three rounds just answered
    failed = re.search(r'<figure class="chart chart-denied">(.*?)</figure>', charts.group(1),
                       re.S)
    assert failed is not None and "<title>policy.pcr_value: 1</title>" in failed.group(1)
    api = client.get("/ui/api/fleet").json()
    assert api["nodes"][0]["name"] == "zz-tampered"                # the live rows too
    assert api["charts"]["chart-denied"] == [["policy.pcr_value", 1]]
    assert len(api["charts"]["chart-rounds"]) == 60


def test_no_failing_node_says_so() -> None:
    from umec.ui.render import attention
    row = {"name": "n", "state": "trusted", "failed_checks": []}
    assert 'class="attention attention-ok"' in attention([row])
    assert "No node failing: 1 nodes" in attention([row])
    stale = {"name": "s", "state": "stale", "failed_checks": []}
    assert "no evidence within its interval" in attention([row, stale])


def test_the_page_script_rebuilds_the_attention_line() -> None:
    from importlib import resources  # the browser test runs it; here: it names the element
    js = resources.files("umec.ui").joinpath("static", "dashboard.js").read_text()
    assert 'getElementById("fleet-attention")' in js and "what to do: " in js
