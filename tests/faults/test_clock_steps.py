"""Clock steps of ±10 min and ±2 h on the server and on the agent (issue 9 point 7).

A real ``umec server`` (and a real ``umec agent`` with swtpm) runs under libfaketime
(``apt-get install faketime``) with ``FAKETIME_TIMESTAMP_FILE``: the test writes a relative
offset (``-600``, ``+2h``, ``+0``) to the file and the process's wall clock steps at once;
``FAKETIME_DONT_FAKE_MONOTONIC=1`` keeps its monotonic clock real, as an NTP step does.

* server clock back: a silent node goes stale at the next sweep (not when real time catches
  up), and a good node is trusted again on its next round;
* server clock forward, then corrected: a node trusted again gets tokens at once (the node
  revocation names a trust epoch, not a time);
* agent clock both ways: the node keeps attesting trusted;
* PostgreSQL: the server reads the database's clock, so a step of its own wall clock moves
  nothing (its HTTP ``Date`` header shows the step, its attestation results do not).

Run alone with ``pytest -m faults``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from sqlalchemy import select

from admission.service.records import AdmittedImage, SqlAdmissionRecords
from attest.agent import VOID_CHALLENGE_CHECKS
from attest.service.models import StateEventRow
from attest.tpm.swtpm import Swtpm, SwtpmCa
from mec_api.tokens.issuer import TOKEN_EXCHANGE, TOKEN_TYPE_JWT
from tests.support.pcr_policy import k3s_policy, pcr_after
from tests.support.simagent import SimulatedNode
from tests.support.tokens import D1, ClusterIssuer
from umec.db import open_database
from umec.localserver import free_port

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
pytestmark = [pytest.mark.faults, pytest.mark.alone, pytest.mark.skipif(
    not LIBFAKETIME.exists(), reason="libfaketime not installed (apt-get install faketime)")]
OPERATOR = "clock-test-operator-token-0123456789"
INTERVAL, GRACE, SWEEP = 1.0, 1.0, 0.5
STALE_LIMIT = INTERVAL + GRACE + SWEEP
GRANTS = "grants: [{namespaces: [tenant-*], scopes: [sensor.read]}]\n"
K3S = b"k3s binary of a node whose clock jumps"


class FakeClock:
    """The offset file libfaketime reads in the processes it is in, at most once a second
    (``FAKETIME_CACHE_DURATION=1``): re-reading it on every clock call (``FAKETIME_NO_CACHE``)
    left an idle ``umec server`` at 58-120 % of a core and starved the rounds the tests time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.step("+0")

    def step(self, offset: str) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(offset + "\n")
        tmp.replace(self.path)  # never a half-written offset

    def env(self) -> dict[str, str]:
        return {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME_TIMESTAMP_FILE": str(self.path),
                "FAKETIME_CACHE_DURATION": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("UMEC_", "FAKETIME", "LD_PRELOAD"))}


class Process:
    """A ``umec`` subcommand as a child process, its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "umec", *args], env=env,
                                         stdout=out, stderr=subprocess.STDOUT)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class Site:
    """``umec server`` under libfaketime, with a cluster issuer and grants for tokens."""

    def __init__(self, tmp: Path, clock: FakeClock, *, database_url: str = "",
                 ek_hashes: tuple[str, ...] = (), ek_ca_bundle: Path | None = None,
                 policy: str = "") -> None:
        self.tmp, self.clock = tmp, clock
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cluster = ClusterIssuer()
        (tmp / "cluster-jwks.json").write_text(json.dumps(self.cluster.jwks()))
        (tmp / "grants.yaml").write_text(GRANTS)
        policies = tmp / "policies"
        policies.mkdir(exist_ok=True)
        (policies / "pi-k3s.yaml").write_text(
            policy or k3s_policy("00" * 32, interval_seconds=INTERVAL))
        self.database_url = database_url or f"sqlite:///{tmp / 'srv' / 'umec.db'}"
        self.env = {**clean_env(), **clock.env(),
                    "UMEC_DATA_DIR": str(tmp / "srv"), "UMEC_DATABASE_URL": self.database_url,
                    "UMEC_LISTEN_PORT": str(self.port), "UMEC_PUBLIC_URL": self.url,
                    "UMEC_OPERATOR_TOKEN": OPERATOR, "UMEC_POLICY_DIR": str(policies),
                    "UMEC_DEFAULT_NODE_CLASS": "pi-k3s", "UMEC_LOG_LEVEL": "WARNING",
                    "UMEC_ATTESTATION_INTERVAL_SECONDS": str(INTERVAL),
                    "UMEC_STALE_GRACE_SECONDS": str(GRACE),
                    "UMEC_DEADLINE_CHECK_SECONDS": str(SWEEP),
                    "UMEC_EK_ALLOWLIST": json.dumps(list(ek_hashes)),
                    "UMEC_TOKEN_SA_JWKS_FILE": str(tmp / "cluster-jwks.json"),
                    "UMEC_TOKEN_GRANTS": str(tmp / "grants.yaml")}
        if ek_ca_bundle is not None:
            self.env["UMEC_EK_CA_BUNDLE"] = str(ek_ca_bundle)
        self.server = Process(["server"], self.env, tmp / "server.log")
        self.operator = httpx.Client(base_url=self.url, timeout=10,
                                     headers={"Authorization": f"Bearer {OPERATOR}"})
        deadline = time.monotonic() + 30
        while True:
            assert self.server.proc.poll() is None, self.server.tail()
            with contextlib.suppress(httpx.HTTPError):
                if self.operator.get("/readyz").status_code == 200:
                    break
            assert time.monotonic() < deadline, self.server.tail()
            time.sleep(0.1)

    def close(self) -> None:
        self.operator.close()
        self.server.stop()

    def node(self, name: str) -> dict[str, Any]:
        r = self.operator.get(f"/attest/v1/nodes/{name}")
        r.raise_for_status()
        node: dict[str, Any] = r.json()
        return node

    def wait_state(self, name: str, state: str, within: float) -> float:
        """Seconds until ``name`` is in ``state`` (fails after ``within``)."""
        start = time.monotonic()
        while (current := self.node(name)["state"]) != state:
            assert time.monotonic() - start < within, \
                f"{name} still {current} after {within} s: {self.node(name)}"
            time.sleep(0.05)
        return time.monotonic() - start

    def checks(self, name: str) -> list[str]:
        """The failed checks of ``name``'s state events, oldest first."""
        _, sessions = open_database(self.database_url)
        with sessions() as s:
            rows = s.scalars(select(StateEventRow).where(StateEventRow.node == name)
                             .order_by(StateEventRow.at)).all()
            found = [c for r in rows for c in r.failed_checks]
        sessions.kw["bind"].dispose()
        return found

    def admit(self, uid: str = "uid-app-1") -> None:
        _, sessions = open_database(self.database_url)
        SqlAdmissionRecords(sessions).record(
            namespace="tenant-a", name="app-1", uid=uid,
            images=[AdmittedImage("spec.containers[0]", f"reg/app@{D1}", D1, ("ci",))],
            verified=True, policy_generation="g1")
        sessions.kw["bind"].dispose()

    def exchange(self) -> httpx.Response:
        return httpx.post(f"{self.url}/oauth2/token", timeout=10, data={
            "grant_type": TOKEN_EXCHANGE, "subject_token": self.cluster.token(),
            "subject_token_type": TOKEN_TYPE_JWT, "scope": "sensor.read"})


def sim_nodes(names: list[str], url: str) -> tuple[httpx.Client, dict[str, SimulatedNode]]:
    client = httpx.Client(base_url=url, timeout=10)
    return client, {n: SimulatedNode(n, client) for n in names}


def ek_hash(node: SimulatedNode) -> str:
    return hashlib.sha256(node.tpm.ek_public.marshal_tpm2b()).hexdigest()


class Rounds:
    """A good node attesting every half second in a thread; round errors (a challenge that
    straddled a step) are retried like the agent does."""

    def __init__(self, node: SimulatedNode) -> None:
        self.node, self.states, self.errors = node, [], []  # type: ignore[var-annotated]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.states.append(self.node.attest()["state"])
            except httpx.HTTPError as e:
                self.errors.append(str(e))
            self._stop.wait(0.5)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture
def fake_clock(tmp_path: Path) -> FakeClock:
    return FakeClock(tmp_path / "faketime.rc")


def start_with_nodes(tmp_path: Path, clock: FakeClock, names: list[str],
                     database_url: str = "") -> tuple[Site, httpx.Client, dict[str, SimulatedNode]]:
    port_url = "http://placeholder"
    client, nodes = sim_nodes(names, port_url)
    site = Site(tmp_path, clock, database_url=database_url,
                ek_hashes=tuple(ek_hash(n) for n in nodes.values()))
    client.base_url = httpx.URL(site.url)
    for node in nodes.values():
        node.enroll_and_activate()
        assert node.attest()["state"] == "trusted"
    return site, client, nodes


@pytest.mark.parametrize("step", ["-600", "-2h"])
def test_server_clock_back_a_silent_node_goes_stale_a_good_one_stays_trusted(
        tmp_path: Path, fake_clock: FakeClock, step: str) -> None:
    site, client, nodes = start_with_nodes(tmp_path, fake_clock, ["good", "silent"])
    rounds = Rounds(nodes["good"])
    try:
        fake_clock.step(step)
        took = site.wait_state("silent", "stale", within=STALE_LIMIT + 1.0)
        assert took < STALE_LIMIT, took
        # Its evidence is dated ahead of the server's clock now: no proof of freshness. Read
        # through the server (its events, newest first by date: after the step back the stale
        # event is dated before the others); the whole record is in the message if it fails.
        detail = site.node("silent")
        stale = [e for e in detail["events"] if e["state"] == "stale"]
        assert [e["failed_checks"] for e in stale] == [["deadline.clock_future"]], (
            detail, site.checks("silent"))
        # The good node's next round (every 0.5 s) trusts it again, and it stays trusted.
        site.wait_state("good", "trusted", within=3.0)
        time.sleep(STALE_LIMIT + 1.0)
        assert site.node("good")["state"] == "trusted"
        assert site.node("silent")["state"] == "stale"
        assert rounds.states[-1] == "trusted"
    finally:
        rounds.stop()
        client.close()
        site.close()


@pytest.mark.parametrize("step", ["+600", "+2h"])
def test_server_clock_forward_then_corrected_tokens_work_at_once(
        tmp_path: Path, fake_clock: FakeClock, step: str) -> None:
    """Under the forward step the node fails once (its tokens are revoked) and is trusted
    again; once the clock is corrected, its next round makes it trusted on the right time and
    a token exchange works at once. Before trust epochs the revocation's time cutoff lay
    ahead by the step and every exchange was refused until real time caught up."""
    site, client, nodes = start_with_nodes(tmp_path, fake_clock, ["node-a"])
    node = nodes["node-a"]
    site.admit()
    old = site.exchange()
    assert old.status_code == 200, old.text
    try:
        fake_clock.step(step)
        assert node.attest()["state"] == "trusted"
        node.tpm.extend(14, b"tampered")
        assert node.attest()["state"] == "untrusted"      # revokes the node's tokens
        node.tpm.reboot()
        assert node.attest()["state"] == "trusted"
        fake_clock.step("+0")  # corrected: the last pass is dated ahead now
        # "At once" counts from when the server has read the correction (libfaketime reads
        # its offset file at most once a second): a round finished within that second ran
        # on the stepped clock, and the exchange after it could too.
        wait_server_offset(site, lambda offset: abs(offset) < 5)
        assert attest_like_the_agent(node)["state"] == "trusted"  # its next round
        fixed = time.monotonic()
        r = site.exchange()
        assert r.status_code == 200, (r.text, time.monotonic() - fixed)
        token = r.json()["access_token"]
        assert jwt.decode(token, options={"verify_signature": False})["node_epoch"] >= 2
        assert sensor_tags(site, token).status_code == 200
        # The token from before the failure stays revoked, by epoch, whatever the clock did.
        # Refused on every call; the reason is the epoch once this process's clock has taken
        # the correction (under load that can trail by a poll: until then it reads "exp is
        # past", the step still applied).
        deadline = time.monotonic() + 10
        while True:
            refused = sensor_tags(site, old.json()["access_token"])
            assert refused.status_code == 401, refused.text
            if "no longer trusted" in refused.text:
                break
            assert "jwt.exp" in refused.text and time.monotonic() < deadline, refused.text
            time.sleep(0.1)
    finally:
        client.close()
        site.close()


@pytest.mark.parametrize("step", ["+600", "+2h"])
def test_server_clock_forward_beyond_a_token_life_then_corrected_loses_no_revocation(
        tmp_path: Path, fake_clock: FakeClock, step: str) -> None:
    """The server's clock runs ahead by more than a token's lifetime, long enough for its
    revocation follower to expire its list and its store to be pruned, and is then corrected.
    A token revoked before the step is refused on the corrected clock, naming the revocation:
    the list drops an entry only when the monotonic clock agrees, and the store keeps entries
    an hour past their expiry. Before, the step dropped the entry and the revoked token (its
    ``exp`` ahead again) was accepted until it expired."""
    site, client, nodes = start_with_nodes(tmp_path, fake_clock, ["node-a"])
    node = nodes["node-a"]
    site.admit()
    old = site.exchange()
    assert old.status_code == 200, old.text
    token = old.json()["access_token"]
    try:
        node.tpm.extend(14, b"tampered")
        assert node.attest()["state"] == "untrusted"      # revokes the node's tokens
        assert "no longer trusted" in sensor_tags(site, token).text
        fake_clock.step(step)
        wait_server_offset(site, lambda offset: offset > 550)
        time.sleep(2.0)  # several follower polls (each expires the list) and a store prune
        refused = sensor_tags(site, token)
        assert refused.status_code == 401 and "jwt.exp" in refused.text, refused.text
        fake_clock.step("+0")
        wait_server_offset(site, lambda offset: abs(offset) < 5)
        time.sleep(1.2)  # the guard's clock takes the correction at its next cache refresh
        refused = sensor_tags(site, token)
        assert refused.status_code == 401, refused.text
        assert "node node-a is no longer trusted" in refused.text, refused.text
    finally:
        client.close()
        site.close()


def wait_server_offset(site: Site, wanted: Callable[[float], bool]) -> None:
    """Until the server's ``Date`` header, less real time, satisfies ``wanted``."""
    deadline = time.monotonic() + 6  # uvicorn refreshes its Date header every second
    while True:
        offset = parsedate_to_datetime(
            site.operator.get("/healthz").headers["date"]).timestamp() - time.time()
        if wanted(offset):
            return
        assert time.monotonic() < deadline, f"the server's clock is {offset:.0f} s off"
        time.sleep(0.2)


def attest_like_the_agent(node: SimulatedNode) -> dict[str, Any]:
    """A round, asked again when the server voided its challenge (its sweep voids a node's
    nonces while the node's latest evidence is dated after now: a round can straddle that),
    as the agent does (VOID_CHALLENGE_CHECKS)."""
    for _ in range(4):
        try:
            return node.attest()
        except httpx.HTTPStatusError as e:
            if e.response.json().get("check") not in VOID_CHALLENGE_CHECKS:
                raise
            time.sleep(0.2)
    return node.attest()


def sensor_tags(site: Site, token: str) -> httpx.Response:
    return httpx.get(f"{site.url}/sensor/v1/tags", timeout=10,
                     headers={"Authorization": f"Bearer {token}"})


def test_server_wall_clock_step_moves_nothing_on_postgresql(
        tmp_path: Path, fake_clock: FakeClock, pg_database: str) -> None:
    site, client, nodes = start_with_nodes(tmp_path, fake_clock, ["good", "silent"],
                                           database_url=pg_database)
    rounds = Rounds(nodes["good"])
    try:
        fake_clock.step("-2h")
        deadline = time.monotonic() + 6  # uvicorn refreshes its Date header every second
        while time.time() - parsedate_to_datetime(
                site.operator.get("/healthz").headers["date"]).timestamp() < 7000:
            assert time.monotonic() < deadline, "the server's wall clock did not step"
            time.sleep(0.2)
        # The silent node misses its deadline as if nothing had happened (deadline.missed, at
        # interval + grace), and the good node never leaves trusted: the server's notion of
        # now is the database's.
        site.wait_state("silent", "stale", within=STALE_LIMIT + 2.0)
        assert site.checks("silent")[-1] == "deadline.missed"
        verdict = nodes["good"].attest()
        assert verdict["state"] == "trusted"
        iat = jwt.decode(verdict["attestation_result"],
                         options={"verify_signature": False})["iat"]
        assert abs(iat - time.time()) < 3, "ctx.now() moved with the server's wall clock"
        assert "stale" not in rounds.states
    finally:
        rounds.stop()
        client.close()
        site.close()


@pytest.mark.swtpm
def test_agent_clock_steps_both_ways_keep_the_node_trusted(
        tmp_path: Path, manufacturer_ca: SwtpmCa,
        swtpm_factory: Callable[[str], Swtpm]) -> None:
    tpm = swtpm_factory("clock-agent")
    bundle = tmp_path / "ek-ca.pem"
    bundle.write_bytes(manufacturer_ca.certificate_chain_pem())  # made with the first TPM
    server_clock = FakeClock(tmp_path / "server-faketime.rc")  # stays at +0
    agent_clock = FakeClock(tmp_path / "agent-faketime.rc")
    site = Site(tmp_path, server_clock, ek_ca_bundle=bundle,
                policy=k3s_policy(pcr_after(K3S), interval_seconds=INTERVAL))
    (tmp_path / "k3s").write_bytes(K3S)
    env = {**clean_env(), **agent_clock.env(), "UMEC_SERVER_URL": site.url,
           "UMEC_NODE_NAME": "node-a", "UMEC_TCTI": tpm.tcti,
           "UMEC_AGENT_STATE_DIR": str(tmp_path / "agent"),
           "UMEC_MEASURE_FILES": json.dumps([str(tmp_path / "k3s")]),
           "UMEC_EVENT_LOG_PATH": str(tmp_path / "no-event-log"),
           "UMEC_ATTESTATION_INTERVAL_SECONDS": "0.5", "UMEC_LOG_LEVEL": "INFO"}
    agent = Process(["agent"], env, tmp_path / "agent.log")
    try:
        deadline = time.monotonic() + 30
        while True:
            r = site.operator.get("/attest/v1/nodes/node-a")
            if r.status_code == 200 and r.json()["state"] == "trusted":
                break
            assert agent.proc.poll() is None, agent.tail()
            assert time.monotonic() < deadline, agent.tail()
            time.sleep(0.2)
        for step in ("+600", "-600", "+2h", "-2h", "+0"):
            agent_clock.step(step)
            before = site.node("node-a")["last_pass_at"]
            end = time.monotonic() + 2.5  # five of the agent's rounds
            passes = set()
            while time.monotonic() < end:
                node = site.node("node-a")
                assert node["state"] == "trusted", (step, node, agent.tail())
                passes.add(node["last_pass_at"])
                time.sleep(0.2)
            assert len(passes - {before}) >= 2, (step, "the agent stopped attesting",
                                                 agent.tail())
    finally:
        agent.stop()
        site.close()
