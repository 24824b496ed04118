"""k3s joins only a trusted node (issue 13 section 2), end to end.

A swtpm node and the real agent, a real ``umec server`` over HTTP (ServerThread) and the fake
Kubernetes API at the HTTP level: a trusted node gets a ``bootstrap.kubernetes.io/token`` Secret
in ``kube-system`` and a K10 token that only its TPM opens; another TPM cannot open it; a node
with a tampered PCR gets no token (``join.untrusted``); a replayed request gets nothing new
(``join.replayed``, refused by umec's database before the apiserver is asked), an older
verdict's nothing (``join.verdict_not_latest``); a node that turns untrusted loses its unused
Secret; an expired token's Secret and row go. The sweep deletes a token only when the Node was
created after its Secret (less ``JOIN_CLOCK_SKEW``), both stamped by the apiserver: an
already-joined node's fresh token stays; umec's clock an hour off the apiserver's (either way)
changes neither; a token issued before umec's clock stepped back is revoked; a Secret whose
stamp cannot be read is deleted at once (``join.kubernetes``); a failed Secret create spends the
verdict and leaves no live row (``join.kubernetes``); a failed delete is retried by the next
sweep.

The server's identity may not get, list or watch Secrets in ``kube-system`` (the fake API answers
403, as RBAC with deploy/host-join/join.yaml's Role does), and every test ends by checking the
server was never refused anything. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import kubernetes.client
import kubernetes.config
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from attest import join_agent
from attest.agent import Agent, AgentConfig
from attest.core.join_token import K3S_NODE_GROUP, parse_k3s_token, rfc3339
from attest.service.join import (
    JOIN_CLOCK_SKEW,
    JoinBridge,
    JoinKubernetesFailed,
    JoinService,
    JoinVerdictNotLatest,
)
from attest.service.models import JoinTokenRow
from attest.tpm.device import Tpm, TpmCommandFailed
from attest.tpm.swtpm import Swtpm, SwtpmCa
from tests.support.fake_kube_api import SECRETS, FakeKubeApi
from tests.support.migrations import BACKENDS
from tests.support.pcr_policy import k3s_policy, pcr_after
from umec.app import Server, build_server
from umec.localserver import ServerThread
from umec.settings import Settings

pytestmark = [pytest.mark.swtpm]
K3S = b"k3s v1.31 arm64 binary"
NODE = "pi-join-1"


def k3s_ca_pem() -> bytes:
    """A self-signed cluster CA like k3s's server-ca.crt."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "k3s-server-ca@1700000000")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class JoinSite:
    client: httpx.Client
    kube: FakeKubeApi
    ca_pem: bytes
    tmp: Path
    tpm: Swtpm
    swtpms: Callable[[str], Swtpm]
    url: str
    server: Server
    # Requests a test makes the fake API refuse with 403 on purpose (method, path).
    refused_on_purpose: list[tuple[str, str]] = field(default_factory=list)

    def agent(self, tpm: Swtpm, name: str = NODE, measure: bytes = K3S,
              state: str = "agent") -> Agent:
        k3s = self.tmp / f"{state}-k3s"
        k3s.write_bytes(measure)
        config = AgentConfig(node_name=name, tcti=tpm.tcti, state_dir=self.tmp / state,
                             measure_files=[k3s],
                             join_token_path=self.tmp / state / "k3s-agent.service.d" /
                             "umec-token.conf")
        return Agent(config, self.client)

    def secrets(self) -> dict[str, dict[str, Any]]:
        with self.kube._cond:
            return {name: obj for (ns, name), obj in self.kube.objects[SECRETS].items()
                    if ns == "kube-system"}

    def rows(self) -> list[JoinTokenRow]:
        with self.server.attest.sessions() as session:
            # issued_at is the Secret's creationTimestamp, whole seconds: expires_at orders.
            return list(session.query(JoinTokenRow).order_by(JoinTokenRow.expires_at))

    def secret_posts(self) -> list[Any]:
        return [r for r in self.kube.calls("POST") if r.path.endswith("/secrets")]

    def join(self, agent: Agent, nonce: bytes | None = None) -> httpx.Response:
        raw = nonce if nonce is not None else agent.last_nonce
        assert raw is not None
        return self.client.post(f"/attest/v1/nodes/{agent.config.node_name}/join",
                                json={"nonce": base64.b64encode(raw).decode()})


@pytest.fixture(params=BACKENDS)
def site(request: pytest.FixtureRequest, tmp_path: Path, manufacturer_ca: SwtpmCa,
         swtpm_factory: Callable[[str], Swtpm]) -> Iterator[JoinSite]:
    url = "" if request.param == "sqlite" else str(request.getfixturevalue("pg_database"))
    tpm = swtpm_factory("join-node")  # provisions the CA's chain on first use
    bundle = tmp_path / "ek-ca.pem"
    bundle.write_bytes(manufacturer_ca.certificate_chain_pem())
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "pi-k3s.yaml").write_text(k3s_policy(pcr_after(K3S)))
    ca_pem = k3s_ca_pem()
    (tmp_path / "server-ca.crt").write_bytes(ca_pem)
    with FakeKubeApi() as kube:
        # RBAC of deploy/host-join/join.yaml: no get, list or watch of kube-system's Secrets.
        kube.deny("fake-token", SECRETS, "kube-system", ("get", "list", "watch"))
        server = build_server(Settings(
            data_dir=tmp_path / "server", database_url=url, ek_ca_bundle=bundle,
            policy_dir=policies,
            default_node_class="pi-k3s", kubeconfig=kube.kubeconfig(tmp_path / "kubeconfig"),
            k3s_server_ca=tmp_path / "server-ca.crt", join_token_ttl_seconds=900,
            join_sweep_seconds=0.2))
        http = ServerThread(server.app).start()
        client = httpx.Client(base_url=http.url, timeout=30)
        joined = JoinSite(client, kube, ca_pem, tmp_path, tpm, swtpm_factory, http.url, server)
        try:
            yield joined
        finally:
            client.close()
            http.stop()
        # The server never asked for what RBAC does not grant it (a list or read of Secrets).
        assert [r for r in kube.requests if r.status == 403
                and (r.method, r.path) not in joined.refused_on_purpose] == []
        assert not [r for r in kube.calls("GET") if "/secrets" in r.path
                    and not r.path.startswith("/api/v1/namespaces/kube-system/secrets/")]


def decoded(secret: dict[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_trusted_node_gets_a_secret_and_a_token_only_its_tpm_opens(site: JoinSite) -> None:
    tpm = site.tpm
    agent = site.agent(tpm)
    verdict = agent.attest_once()
    assert verdict["trusted"] is True, verdict
    resp = site.join(agent)
    assert resp.status_code == 200, resp.text
    grant = resp.json()
    # The Secret k3s reads: one, in kube-system, of the bootstrap-token type and shape.
    secrets = site.secrets()
    assert list(secrets) == [f"bootstrap-token-{grant['token_id']}"]
    secret = secrets[f"bootstrap-token-{grant['token_id']}"]
    assert secret["type"] == "bootstrap.kubernetes.io/token"
    data = decoded(secret)
    assert data["token-id"] == grant["token_id"] and len(data["token-secret"]) == 16
    assert data["usage-bootstrap-authentication"] == "true"
    assert data["usage-bootstrap-signing"] == "true"
    assert data["auth-extra-groups"] == K3S_NODE_GROUP
    expires = datetime.strptime(data["expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert timedelta(minutes=14) < expires - datetime.now(UTC) <= timedelta(minutes=15)
    # Opened by the node's TPM: k3s's secure format with the cluster CA's hash.
    with Tpm(tpm.tcti, ek_kind=agent.config.ek_kind) as own:
        agent.load_ak(own)
        token = join_agent.open_grant(own, NODE, grant)
    ca, token_id, token_secret = parse_k3s_token(token)
    assert ca == hashlib.sha256(site.ca_pem).hexdigest()
    assert (token_id, token_secret) == (data["token-id"], data["token-secret"])
    # Another TPM (its own EK), with its own AK loaded under the same node name, cannot.
    other = site.swtpms("join-impostor")
    with Tpm(other.tcti, ek_kind="rsa") as foreign:
        foreign.load_or_create_ak(site.tmp / "impostor", "ecc")
        with pytest.raises(TpmCommandFailed):
            join_agent.open_grant(foreign, NODE, grant)
    # The same request again (a replay) gets nothing new.
    replay = site.join(agent)
    assert replay.status_code == 409 and replay.json()["check"] == "join.replayed"
    assert list(site.secrets()) == [f"bootstrap-token-{grant['token_id']}"]
    # Refused by umec's database (one row per verdict), before the apiserver was asked.
    assert len(site.secret_posts()) == 1
    assert not site.kube.calls("DELETE")
    rows = site.rows()
    assert [(r.node, r.token_id, r.revoked_at) for r in rows] == [
        (NODE, grant["token_id"], None)]
    assert rows[0].verdict == hashlib.sha256(agent.last_nonce or b"").hexdigest()


def test_concurrent_requests_for_one_verdict_get_one_token(site: JoinSite) -> None:
    agent = site.agent(site.tpm)
    assert agent.attest_once()["trusted"] is True
    barrier = threading.Barrier(4)
    answers: list[httpx.Response] = []

    def ask() -> None:
        with httpx.Client(base_url=site.url, timeout=30) as client:
            barrier.wait()
            answers.append(client.post(f"/attest/v1/nodes/{NODE}/join", json={
                "nonce": base64.b64encode(agent.last_nonce or b"").decode()}))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(a.status_code for a in answers) == [200, 409, 409, 409], \
        [a.text for a in answers]
    assert {a.json()["check"] for a in answers if a.status_code == 409} == {"join.replayed"}
    assert len(site.secret_posts()) == 1 and len(site.secrets()) == 1
    assert len(site.rows()) == 1


def test_agent_writes_the_token_and_rotation_keeps_one_secret(site: JoinSite) -> None:
    tpm = site.tpm
    agent = site.agent(tpm)
    first = agent.attest_once()
    assert site.join(agent).status_code == 200
    older = agent.last_nonce
    # The next verdict's request rotates: the earlier Secret is gone, one remains.
    assert agent.join_once(agent.attest_once()) is True and first["trusted"]
    assert len(site.secrets()) == 1
    old, new = site.rows()
    assert old.revoked_at is not None and old.deleted_at is not None
    assert new.revoked_at is None and f"bootstrap-token-{new.token_id}" in site.secrets()
    # Only the old Secret is deleted. The sweep may delete it too, between the rotation's
    # revocation and its own DELETE (the second answers 404, which counts as gone): a set.
    assert {r.path.rsplit("/", 1)[1] for r in site.kube.calls("DELETE")} == {
        f"bootstrap-token-{old.token_id}"}
    path = agent.config.join_token_path
    assert path is not None and stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    token = text.split('K3S_TOKEN=')[1].split('"')[0]
    assert "[Service]" in text
    assert f"bootstrap-token-{parse_k3s_token(token)[1]}" in site.secrets()
    # A request with an older verdict's nonce gets nothing.
    stale = site.join(agent, older)
    assert stale.status_code == 409 and stale.json()["check"] == "join.verdict_not_latest"


def test_turning_untrusted_deletes_the_unused_secret(site: JoinSite,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    tpm = site.tpm
    agent = site.agent(tpm)
    assert agent.join_once(agent.attest_once()) is True
    assert len(site.secrets()) == 1
    with Tpm(tpm.tcti) as raw:  # something changes the measured boot state after the join
        raw.pcr_extend(14, {"sha256": hashlib.sha256(b"tampered").digest()})
    verdict = agent.attest_once()
    assert verdict["trusted"] is False
    wait_for(lambda: not site.secrets())
    deletes = [r for r in site.kube.calls("DELETE") if "/secrets/bootstrap-token-" in r.path]
    # One DELETE removed it. The state-change listener and the periodic sweep may both reach
    # it under load: a second finds it gone (404), which is no error.
    assert [r.status for r in deletes if r.status != 404] == [200], deletes
    assert len({r.path for r in deletes}) == 1 and len(deletes) <= 2, deletes
    refused = site.join(agent)
    assert refused.status_code == 403 and refused.json()["check"] == "join.untrusted"
    assert "pcr" in refused.json()["detail"]
    with caplog.at_level(logging.ERROR, logger="umec.agent"):
        assert agent.join_once(verdict) is False
    failed = [(getattr(r, "check", ""), getattr(r, "hint", "")) for r in caplog.records
              if r.name == "umec.agent"]
    assert failed and all(check and hint for check, hint in failed), failed
    assert [c for c, _ in failed] == [f["check"] for f in verdict["failed_checks"]]


def test_tampered_boot_pcr_never_gets_a_token(site: JoinSite) -> None:
    tpm = site.tpm
    agent = site.agent(tpm, measure=b"a k3s binary someone patched")
    verdict = agent.attest_once()
    assert verdict["trusted"] is False
    refused = site.join(agent)
    assert refused.status_code == 403, refused.text
    body = refused.json()
    assert body["check"] == "join.untrusted" and body["hint"]
    assert agent.join_once(verdict) is False
    assert site.secrets() == {}
    assert agent.config.join_token_path is not None
    assert not agent.config.join_token_path.exists()
    assert not [r for r in site.kube.calls("POST") if "/secrets" in r.path]


def test_umec_agent_once_join_writes_k3s_config(site: JoinSite) -> None:
    """`umec agent --once --join PATH` (the host mode): trusted, token in k3s's config.yaml."""
    k3s = site.tmp / "k3s-binary"
    k3s.write_bytes(K3S)
    config = site.tmp / "etc-rancher-k3s" / "config.yaml"
    config.parent.mkdir()
    config.write_text("server: https://k3s.example:6443\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("UMEC_")}
    env.update({"UMEC_DATA_DIR": str(site.tmp / "cli"), "UMEC_LOG_LEVEL": "WARNING",
                "UMEC_SERVER_URL": site.url, "UMEC_NODE_NAME": NODE,
                "UMEC_TCTI": site.tpm.tcti, "UMEC_AGENT_STATE_DIR": str(site.tmp / "cli-agent"),
                "UMEC_MEASURE_FILES": json.dumps([str(k3s)]),
                "UMEC_EVENT_LOG_PATH": str(site.tmp / "no-event-log")})
    done = subprocess.run([sys.executable, "-m", "umec", "agent", "--once", "--join",
                           str(config)], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    written = config.read_text()
    assert "server: https://k3s.example:6443" in written
    token = written.split("token: ")[1].strip()
    assert parse_k3s_token(token)[0] == hashlib.sha256(site.ca_pem).hexdigest()
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert len(site.secrets()) == 1


def test_joined_node_token_is_used_then_deleted(site: JoinSite) -> None:
    """The Done-when story: the node opens its token, k3s authenticates it against the Secret
    (the fake API serves that read), the kubelet registers the Node, and the used Secret goes."""
    agent = site.agent(site.tpm)
    assert agent.join_once(agent.attest_once()) is True
    path = agent.config.join_token_path
    assert path is not None
    token = path.read_text().split("K3S_TOKEN=")[1].split('"')[0]
    _, token_id, token_secret = parse_k3s_token(token)
    time.sleep(0.6)  # sweeps run meanwhile: not joined yet, so the token stays
    assert list(site.secrets()) == [f"bootstrap-token-{token_id}"]
    # k3s's bootstrap authenticator: the Secret named by the token id holds its secret.
    seen = site.kube.core_v1().read_namespaced_secret(f"bootstrap-token-{token_id}",
                                                     "kube-system")
    assert base64.b64decode(seen.data["token-secret"]).decode() == token_secret
    site.kube.add_node(NODE)  # joined: the kubelet registered its Node
    # The row's deleted_at is written after the DELETE: waiting for the Secret alone races it.
    wait_for(lambda: site.rows()[0].deleted_at is not None)
    assert not site.secrets()
    gets = [r for r in site.kube.calls("GET")
            if r.path.endswith(f"/secrets/bootstrap-token-{token_id}")]
    deletes = [r for r in site.kube.calls("DELETE")
               if r.path.endswith(f"/secrets/bootstrap-token-{token_id}")]
    assert gets and len(deletes) == 1
    assert site.kube.requests.index(gets[0]) < site.kube.requests.index(deletes[0])
    [row] = site.rows()  # kept until it expires: the verdict stays spent
    assert row.revoked_at is not None and row.deleted_at is not None
    replay = site.join(agent)
    assert replay.status_code == 409 and replay.json()["check"] == "join.replayed"


def test_expired_token_row_and_secret_are_swept(site: JoinSite) -> None:
    """A token nobody used: past its expiry its Secret is deleted (a 404 would be fine too)
    and its row goes. The Node never appears, so only expiry can end it."""
    agent = site.agent(site.tpm)
    assert agent.join_once(agent.attest_once()) is True
    [row] = site.rows()
    time.sleep(0.6)
    assert list(site.secrets()) == [f"bootstrap-token-{row.token_id}"]
    with site.server.attest.sessions.begin() as session:
        session.query(JoinTokenRow).update(
            {"expires_at": datetime.now(UTC) - timedelta(seconds=1)})
    wait_for(lambda: not site.rows())
    assert site.secrets() == {}
    deletes = [r for r in site.kube.calls("DELETE")
               if r.path.endswith(f"/secrets/bootstrap-token-{row.token_id}")]
    assert [d.status for d in deletes] == [200]


class SinkRacesTheCreate:
    """The server's kubernetes client (its kubeconfig, its RBAC) with one twist: just before the
    Secret is created, the node's tokens are revoked, as the state-change sink does when the
    node leaves trusted while its join request is being served."""

    def __init__(self, api: kubernetes.client.CoreV1Api) -> None:
        self.api = api
        self.join: JoinService | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.api, name)

    def create_namespaced_secret(self, *args: Any, **kwargs: Any) -> Any:
        assert self.join is not None
        self.join.delete_secrets(NODE)
        return self.api.create_namespaced_secret(*args, **kwargs)


def test_token_revoked_while_issued_does_not_outlive_its_row(site: JoinSite) -> None:
    agent = site.agent(site.tpm)
    assert agent.attest_once()["trusted"] is True
    api = SinkRacesTheCreate(kubernetes.client.CoreV1Api(kubernetes.config.new_client_from_config(
        config_file=str(site.tmp / "kubeconfig"))))
    api.join = JoinService(site.server.attest, JoinBridge(api=api, ca_pem=site.ca_pem))
    assert agent.last_nonce is not None
    with pytest.raises(JoinVerdictNotLatest):
        api.join.issue(NODE, agent.last_nonce)
    assert site.secrets() == {}
    [row] = site.rows()
    assert row.revoked_at is not None and row.deleted_at is not None
    # Deleted before the create (404: not there yet) and after it (200). The server's own
    # sweep may delete the revoked row's Secret too, in between (seen in CI under two workers):
    # one 200 in all, every other DELETE a 404.
    statuses = [r.status for r in site.kube.calls("DELETE")]
    assert statuses[0] == 404 and statuses.count(200) == 1, statuses
    assert set(statuses) == {404, 200}, statuses


def token_of(agent: Agent) -> str:
    path = agent.config.join_token_path
    assert path is not None
    return parse_k3s_token(path.read_text().split("K3S_TOKEN=")[1].split('"')[0])[1]


def node_reads(site: JoinSite) -> list[Any]:
    return [r for r in site.kube.calls("GET") if r.path.endswith(f"/nodes/{NODE}")]


@pytest.mark.parametrize(("node_age", "kept"), [
    (timedelta(hours=1), True),            # joined long before: the token is for a rejoin
    (JOIN_CLOCK_SKEW - timedelta(seconds=5), False),  # within the allowance: counts as used
    (None, False),                         # unreadable creationTimestamp: fails closed, used
])
def test_already_joined_node_keeps_its_fresh_token(site: JoinSite, node_age: timedelta | None,
                                                   kept: bool) -> None:
    """A node that re-attests after it joined (a reboot, k3s-agent's old token expired) gets a
    token its Node object predates: the sweep leaves it for the rejoin. Only a Node created
    after the token (less JOIN_CLOCK_SKEW) means the token was used."""
    created = "not a time" if node_age is None else \
        (datetime.now(UTC) - node_age).strftime("%Y-%m-%dT%H:%M:%SZ")
    site.kube.add_node(NODE, created=created)
    agent = site.agent(site.tpm)
    assert agent.join_once(agent.attest_once()) is True
    secret = f"bootstrap-token-{token_of(agent)}"
    if kept:
        reads = len(node_reads(site))
        wait_for(lambda: len(node_reads(site)) >= reads + 3)  # three sweeps read the Node
        assert list(site.secrets()) == [secret]
        [row] = site.rows()
        assert row.revoked_at is None and row.deleted_at is None
        assert not site.kube.calls("DELETE")
        # The kubelet re-registers (its Node was deleted and is created anew): used, deleted.
        site.kube.add_node(NODE)
    # deleted_at is written after the DELETE: waiting for the Secret alone races it.
    wait_for(lambda: site.rows()[0].deleted_at is not None)
    assert not site.secrets()
    [row] = site.rows()
    assert row.revoked_at is not None and row.deleted_at is not None
    assert [(r.path.rsplit("/", 1)[1], r.status) for r in site.kube.calls("DELETE")] == [
        (secret, 200)]


@pytest.mark.parametrize("status", [500, 403])
def test_failed_secret_create_refuses_and_spends_the_verdict(site: JoinSite,
                                                             status: int) -> None:
    """Kubernetes refuses the Secret create: the node gets join.kubernetes (503), no row stays
    live without a Secret, the verdict is used up (a retry is join.replayed) and the next
    verdict gets its token."""
    agent = site.agent(site.tpm)
    assert agent.attest_once()["trusted"] is True
    create = "/api/v1/namespaces/kube-system/secrets"
    site.kube.fail_next(status, method="POST", path=create)
    if status == 403:
        site.refused_on_purpose.append(("POST", create))
    refused = site.join(agent)
    assert refused.status_code == 503, refused.text
    body = refused.json()
    assert body["check"] == "join.kubernetes" and body["hint"]
    assert "Traceback" not in refused.text and "File \"" not in refused.text
    assert [r.status for r in site.secret_posts()] == [status]
    assert site.secrets() == {}
    [row] = site.rows()
    assert row.revoked_at is not None and row.deleted_at is not None  # nothing live, no Secret
    # The create may have gone through before the answer failed: its name is deleted (404 here;
    # the sweep, retrying unfinished deletions, may have raced the request to it once more).
    deletes = {(r.path.rsplit("/", 1)[1], r.status) for r in site.kube.calls("DELETE")}
    assert deletes == {(f"bootstrap-token-{row.token_id}", 404)}
    replay = site.join(agent)
    assert replay.status_code == 409 and replay.json()["check"] == "join.replayed"
    assert len(site.secret_posts()) == 1  # refused by the database, the apiserver not asked
    assert agent.join_once(agent.attest_once()) is True
    assert list(site.secrets()) == [f"bootstrap-token-{token_of(agent)}"]


def test_sweep_retries_a_failed_delete(site: JoinSite) -> None:
    """The node joined; the sweep's DELETE of its used Secret fails once (500): the row stays
    revoked and not deleted, and the next sweep deletes the Secret."""
    agent = site.agent(site.tpm)
    assert agent.join_once(agent.attest_once()) is True
    secret = f"bootstrap-token-{token_of(agent)}"
    site.kube.fail_next(500, method="DELETE", path=f"/secrets/{secret}")
    site.kube.add_node(NODE)
    # The sweep records the deletion after its DELETE answered: wait for the row, not the
    # Secret (seen under load: the Secret gone, deleted_at not written yet).
    wait_for(lambda: site.rows()[0].deleted_at is not None)
    assert not site.secrets()
    assert [(r.path.rsplit("/", 1)[1], r.status) for r in site.kube.calls("DELETE")] == [
        (secret, 500), (secret, 200)]
    [row] = site.rows()
    assert row.revoked_at is not None and row.deleted_at is not None
    assert row.deleted_at > row.revoked_at  # deleted by a later sweep than the one revoking


def test_a_verdict_recorded_after_the_pass_makes_its_nonce_not_the_latest() -> None:
    """The join names the latest passing quote's nonce, and nothing may have been recorded
    since: a later verdict that moved no pass (last_evidence_at past last_pass_at), or the
    sweep re-dating evidence after a clock step, refuses it (join.verdict_not_latest)."""
    from types import SimpleNamespace
    nonce = os.urandom(32)
    passed = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    latest = SimpleNamespace(last_pass_nonce=nonce.hex(), last_pass_at=passed,
                             last_evidence_at=passed)
    JoinService._check_latest_verdict("node-a", nonce, latest)
    with pytest.raises(JoinVerdictNotLatest):
        JoinService._check_latest_verdict("node-a", os.urandom(32), latest)
    later = SimpleNamespace(**{**vars(latest), "last_evidence_at": passed + timedelta(seconds=1)})
    with pytest.raises(JoinVerdictNotLatest):
        JoinService._check_latest_verdict("node-a", nonce, later)


# -- umec's clock apart from the apiserver's (the fake's: real time) ----------------------------

UMEC_OFF = timedelta(hours=1)
TTL = timedelta(seconds=900)  # the site's join_token_ttl_seconds


def set_umec_clock(site: JoinSite, offset: timedelta) -> None:
    """umec's one clock (every time the attest context writes or compares, the sweep's too)
    runs ``offset`` apart from the apiserver's, as after a step of either."""
    site.server.attest.now = lambda: datetime.now(UTC) + offset


def run_clocks_apart(site: JoinSite, ahead: str) -> None:
    """One clock runs an hour ahead of the other: umec's, or the apiserver's (the fake's
    creationTimestamps; umec behind it cannot be had by setting umec's clock back, or the EK
    certificate, issued just now, would not be valid yet)."""
    if ahead == "umec":
        set_umec_clock(site, UMEC_OFF)
    else:
        site.kube.clock = lambda: time.time() + UMEC_OFF.total_seconds()


def apiserver_now(site: JoinSite) -> datetime:
    return datetime.fromtimestamp(site.kube.clock(), UTC)


def wait_for_sweeps(site: JoinSite, rounds: int = 3) -> None:
    """``rounds`` sweeps read the Node, or one deleted the Secret (it stops reading then)."""
    reads = len(node_reads(site))
    wait_for(lambda: len(node_reads(site)) >= reads + rounds or not site.secrets())


@pytest.mark.parametrize("ahead", ["umec", "apiserver"])
def test_used_token_is_swept_however_far_umec_clock_is_off(site: JoinSite, ahead: str) -> None:
    """The attack: umec's clock runs an hour ahead of the apiserver's (or behind it: the
    apiserver's ahead). Compared with umec's issue time, the Node (created after the token, on
    the apiserver's clock) would look an hour older than the token: the used token kept until
    expiry (also umec-dated: 1 h + TTL), and a copy stolen from the node's disk joins another
    machine meanwhile. Compared with the Secret's creationTimestamp, it is used, revoked and
    its Secret deleted."""
    run_clocks_apart(site, ahead)
    agent = site.agent(site.tpm)
    assert agent.join_once(agent.attest_once()) is True
    secret = f"bootstrap-token-{token_of(agent)}"
    stamp = site.secrets()[secret]["metadata"]["creationTimestamp"]  # the apiserver's
    wait_for_sweeps(site)  # no Node yet: not used, it stays
    assert list(site.secrets()) == [secret] and not site.kube.calls("DELETE")
    # The kubelet registers: stamped by the apiserver's clock, now.
    site.kube.add_node(NODE, created=rfc3339(apiserver_now(site)))
    wait_for(lambda: site.rows()[0].deleted_at is not None)
    row = only_secret_deleted(site, secret)
    # The row holds the Secret's stamp (the apiserver's clock); its expiry is umec's.
    assert rfc3339(row.issued_at) == stamp
    assert abs(row.issued_at - apiserver_now(site)) < timedelta(minutes=1)
    assert abs(row.expires_at - (site.server.attest.now() + TTL)) < timedelta(minutes=1)
    replay = site.join(agent)
    assert replay.status_code == 409 and replay.json()["check"] == "join.replayed"


def only_secret_deleted(site: JoinSite, secret: str) -> Any:
    """The one row, revoked and deleted, and its Secret gone: one DELETE, answered 200."""
    assert not site.secrets()
    assert [(r.path.rsplit("/", 1)[1], r.status) for r in site.kube.calls("DELETE")] == [
        (secret, 200)]
    [row] = site.rows()
    assert row.revoked_at is not None and row.deleted_at is not None
    return row


@pytest.mark.parametrize("ahead", ["umec", "apiserver"])
def test_unused_rejoin_token_stays_however_far_umec_clock_is_off(site: JoinSite,
                                                                ahead: str) -> None:
    """The node joined ten minutes ago (the apiserver's clock) and re-attests after a reboot:
    its new token is for the rejoin, not used yet, and stays. Compared with umec's issue time
    an hour behind the apiserver's clock, the Node would look newer than the token: used."""
    run_clocks_apart(site, ahead)
    site.kube.add_node(NODE, created=rfc3339(apiserver_now(site) - timedelta(minutes=10)))
    agent = site.agent(site.tpm)
    assert agent.join_once(agent.attest_once()) is True
    secret = f"bootstrap-token-{token_of(agent)}"
    wait_for_sweeps(site)
    assert list(site.secrets()) == [secret]
    assert not site.kube.calls("DELETE")
    [row] = site.rows()
    assert row.revoked_at is None and row.deleted_at is None
    assert rfc3339(row.issued_at) == site.secrets()[secret]["metadata"]["creationTimestamp"]


def test_token_issued_before_umec_clock_stepped_back_is_revoked(site: JoinSite,
                                                                caplog: pytest.LogCaptureFixture
                                                                ) -> None:
    """umec's clock ran an hour ahead when it issued the token, then stepped back: the row's
    expiry (and the Secret's ``expiration``) lie an hour further out than any token issued now
    would. Not kept alive by that: the next sweep revokes the row and deletes its Secret, with
    no Node in sight. (The row is dated as that clock would have: stepping the whole server's
    clock back would also make the node's own records future ones, and its revocation by the
    state-change sink would hide the sweep's.)"""
    agent = site.agent(site.tpm)
    assert agent.join_once(agent.attest_once()) is True
    secret = f"bootstrap-token-{token_of(agent)}"
    wait_for_sweeps(site)  # a token expiring within TTL of now stays
    assert list(site.secrets()) == [secret] and not site.kube.calls("DELETE")
    with caplog.at_level(logging.WARNING, logger="umec.attest.join"):
        with site.server.attest.sessions.begin() as session:
            session.query(JoinTokenRow).update(
                {"expires_at": datetime.now(UTC) + UMEC_OFF + TTL})
        wait_for(lambda: site.rows()[0].deleted_at is not None)
    row = only_secret_deleted(site, secret)
    assert [getattr(r, "token_ids", None) for r in caplog.records
            if r.message.startswith("join tokens issued in the future")] == [[row.token_id]]
    assert site.join(agent).json()["check"] == "join.replayed"  # the verdict stays spent


class AnswerWithoutStamp:
    """The server's kubernetes client, but the apiserver's answer to the Secret create carries
    ``body`` instead of the created object (no readable creationTimestamp)."""

    def __init__(self, api: kubernetes.client.CoreV1Api, body: bytes) -> None:
        self.api, self.body = api, body

    def __getattr__(self, name: str) -> Any:
        return getattr(self.api, name)

    def create_namespaced_secret(self, *args: Any, **kwargs: Any) -> Any:
        from types import SimpleNamespace
        self.api.create_namespaced_secret(*args, **kwargs)
        return SimpleNamespace(status=201, data=self.body)


@pytest.mark.parametrize("body", [
    b'{"metadata": {"name": "bootstrap-token-x"}}',
    b'{"metadata": {"creationTimestamp": "yesterday"}}',
    b"not json",
], ids=["missing", "not-rfc3339", "not-json"])
def test_secret_without_readable_stamp_fails_closed(site: JoinSite, body: bytes) -> None:
    """Its use could never be told on the apiserver's clock: the token is not handed out, the
    Secret is deleted and the verdict spent (join.kubernetes, 503)."""
    agent = site.agent(site.tpm)
    assert agent.attest_once()["trusted"] is True
    api = AnswerWithoutStamp(kubernetes.client.CoreV1Api(kubernetes.config.new_client_from_config(
        config_file=str(site.tmp / "kubeconfig"))), body)
    join = JoinService(site.server.attest, JoinBridge(api=api, ca_pem=site.ca_pem))
    assert agent.last_nonce is not None
    with pytest.raises(JoinKubernetesFailed) as refused:
        join.issue(NODE, agent.last_nonce)
    assert (refused.value.status, refused.value.check) == (503, "join.kubernetes")
    assert "SecretUnstamped" in str(refused.value) and "creationTimestamp" in str(refused.value)
    assert site.secrets() == {}
    [row] = site.rows()
    assert row.revoked_at is not None and row.deleted_at is not None
    # Deleted once (200); the sweep, retrying unfinished deletions, may race it to a 404.
    statuses = [r.status for r in site.kube.calls("DELETE")
                if r.path.endswith(f"/secrets/bootstrap-token-{row.token_id}")]
    assert statuses.count(200) == 1 and set(statuses) <= {200, 404}, statuses
    replay = site.join(agent)
    assert replay.status_code == 409 and replay.json()["check"] == "join.replayed"
