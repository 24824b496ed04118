"""Attacks on "revocation that cannot be lost" (issue 10), over HTTP against a real ``umec
server`` on loopback and the webhook as ``umec webhook`` wires it.

Each test is one way found to break a promise of the design (docs/decisions.md, "Revocation
that cannot be lost" and the pod-deletion section). The ones that fail today are marked
``xfail(strict=True)``: fix the product, then remove the marker.

* A revoked token comes back at the end of its life: the guard accepts a token until
  ``exp + leeway`` (5 s) but a revocation entry lives only until the token's ``exp`` (RFC
  7009) or ``now + 1 s + lifetime`` (node, pod): "once refused, stays refused" breaks.
* Fixed: the webhook took any AdmissionReview from anyone who could reach it (a forged Pod
  DELETE revoked a live pod's tokens; a forged CREATE could record a pod as verified). It now
  requires the API server's client certificate in the TLS handshake (mutual TLS).
* A pod UPDATE review that started before the pod's DELETE review records the pod again after
  the DELETE forgot it: the leftover service-account token mints again.
* ``POST /oauth2/revoke`` reads the whole revocation set on every call, uncoalesced and not
  rate-limited when the token is already revoked: a token holder multiplies database work,
  which the feed's :class:`kernel.coalesce.CoalescedRead` was built to prevent.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import event, select

from admission.service.certs import WebhookCerts
from mec_api.tokens.models import RevocationRow
from tests.support.revocation_site import DATABASES, IMAGE, Hook, Site, running_site
from tests.support.webhook import (
    HANDSHAKE_REFUSED,
    FakeVerifier,
    authority,
    client_tls,
    key,
    policy_doc,
    webhook_test_certs,
)
from umec.localserver import ServerThread
from umec.settings import Settings
from umec.webhook_process import build_webhook, check_client_auth, tls_options

TABLE = RevocationRow.__table__
GUARD_LEEWAY = 5.0  # AccessTokenGuard.leeway


def _exchange(at: Site, *, uid: str = "uid-app-1", name: str = "app-1",
              sa_lifetime: int = 3600) -> dict[str, Any]:
    return at.token_response(uid, name, sa_lifetime)


def _exp(token: str) -> int:
    import jwt
    return int(jwt.decode(token, options={"verify_signature": False})["exp"])


def _sleep_until(posix: float) -> None:
    wait = posix - time.time()
    if wait > 0:
        time.sleep(wait)


# -- 1. a revoked token comes back inside the guard's leeway -------------------------------------

def test_a_revoked_token_stays_refused_past_its_exp(site: Site) -> None:
    token = _exchange(site, sa_lifetime=4)["access_token"]  # exp = min(iat + 300, SA exp)
    assert site.call(token).status_code == 200
    assert httpx.post(f"{site.url}/oauth2/revoke", data={"token": token}).status_code == 200
    r = site.refused_within(token, 1.0)
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    exp = _exp(token)
    _sleep_until(exp + 1.5)  # past the entry's expiry, inside the guard's leeway
    late = site.call(token)
    assert late.status_code == 401, (
        f"{time.time() - exp:.1f} s after exp the revoked token answers {late.status_code}")


@pytest.fixture(params=DATABASES)
def short_site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Site]:
    """``site`` (tests/test_revocation.py) with a 4 s access-token lifetime."""
    url = "" if request.param == "sqlite" else str(request.getfixturevalue("pg_database"))
    with running_site(tmp_path, url, token_lifetime_seconds=4) as running:
        yield running


def test_a_token_of_an_untrusted_node_stays_refused_to_its_last_second(
        short_site: Site) -> None:
    token = _exchange(short_site)["access_token"]
    assert short_site.call(token).status_code == 200
    short_site.node.tpm.extend(14, b"tampered k3s binary")
    assert short_site.node.attest()["state"] == "untrusted"
    r = short_site.refused_within(token, 1.0)
    assert r.status_code == 401 and "no longer trusted" in r.json()["detail"]
    exp = _exp(token)
    _sleep_until(exp + 2.5)  # the entry (verdict + 1 s + 4 s) is gone; exp + 5 s is not
    late = short_site.call(token)
    assert late.status_code == 401, (
        f"{time.time() - exp:.1f} s after exp the token of the untrusted node answers "
        f"{late.status_code}")


# -- 2. anyone who reaches the webhook can revoke any pod (fixed: mTLS) ------------------------

def _pod_review(operation: str, uid: str, name: str, *, user: str = "tester",
                image: str = IMAGE) -> dict[str, Any]:
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "tenant-a", "uid": uid},
           "spec": {"containers": [{"name": "app", "image": image}]}}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": f"req-{operation}-{uid}-{time.monotonic_ns()}",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": "tenant-a", "name": name, "operation": operation,
        "userInfo": {"username": user}, "dryRun": False,
        "object": None if operation == "DELETE" else pod,
        "oldObject": pod if operation != "CREATE" else None}}


@dataclass
class ApiServerHook(Hook):
    """The webhook of ``site`` started as ``umec webhook`` starts it with
    ``UMEC_WEBHOOK_CLIENT_CA``: :func:`build_webhook` served with
    :func:`umec.webhook_process.tls_options`. Reviews of :meth:`review` come with the API
    server's client certificate; :meth:`post` chooses."""

    certs: WebhookCerts

    def post(self, body: dict[str, Any], *, apiserver: bool) -> httpx.Response:
        client = (self.certs.client_cert, self.certs.client_key) if apiserver else None
        return httpx.post(f"{self.url}/validate", json=body, timeout=30,
                          verify=client_tls(self.certs, client))

    def review(self, operation: str, uid: str, name: str = "app-1", *,
               deleting: bool = False, dry_run: bool = False) -> dict[str, Any]:
        assert not deleting and not dry_run  # not needed here
        r = self.post(_pod_review(operation, uid, name), apiserver=True)
        assert r.status_code == 200, r.text
        answer: dict[str, Any] = r.json()["response"]
        return answer


@pytest.fixture
def mtls_hook(site: Site, tmp_path: Path) -> Iterator[ApiServerHook]:
    signer = key()
    policies = tmp_path / "admission-policies"
    policies.mkdir()
    (policies / "ci.yaml").write_text(yaml.safe_dump(
        policy_doc("ci-signed", ["**"], [authority("ci", {"ci": signer})])))
    certs = webhook_test_certs(tmp_path / "webhook-certs")
    settings = Settings(data_dir=tmp_path / "webhook",
                        database_url=site.engine.url.render_as_string(hide_password=False),
                        admission_policy_dir=policies, webhook_tls_cert=certs.cert,
                        webhook_tls_key=certs.key, webhook_client_ca=certs.client_ca_cert)
    check_client_auth(settings)  # what `umec webhook` checks before it starts
    app, deps = build_webhook(settings)
    verifier = FakeVerifier()
    verifier.sign(IMAGE, signer)
    deps.verifier = verifier   # the one stand-in, as in tests/test_pod_revocation.py
    with ServerThread(app, **tls_options(settings)) as http:
        yield ApiServerHook(http.url, deps, site, settings, certs)
    deps.records.engine.dispose()  # type: ignore[union-attr]


def test_a_forged_delete_review_does_not_revoke_a_live_pod(
        mtls_hook: ApiServerHook) -> None:
    """No client certificate, no review: the forged DELETE dies in the TLS handshake."""
    victim = mtls_hook.admit("uid-victim", "victim")
    assert mtls_hook.site.call(victim).status_code == 200
    forged = _pod_review("DELETE", "uid-victim", "victim",
                         user="system:serviceaccount:tenant-b:attacker")
    with pytest.raises(HANDSHAKE_REFUSED):  # no credential of any kind
        mtls_hook.post(forged, apiserver=False)
    time.sleep(1.2)  # past the guard's next read
    r = mtls_hook.site.call(victim)
    assert r.status_code == 200, f"the live pod's token is refused: {r.text}"
    assert mtls_hook.records.lookup("uid-victim") is not None, "the forged DELETE forgot it"
    assert mtls_hook.pod_revocations() == []
    # The same DELETE from the API server (its client certificate) forgets and revokes: the
    # handshake, not the review, is what stopped the forgery.
    assert mtls_hook.post(forged, apiserver=True).json()["response"]["allowed"] is True
    assert mtls_hook.records.lookup("uid-victim") is None
    assert mtls_hook.pod_revocations() == ["uid-victim"]
    r = mtls_hook.site.refused_within(victim, 1.0)
    assert r.status_code == 401 and "uid-victim" in r.json()["detail"]


def test_a_forged_create_review_does_not_make_a_pod_verified(
        mtls_hook: ApiServerHook) -> None:
    """A pod that exists but was never admitted (e.g. in a namespace the webhook does not
    review) gets no verified record from a CREATE review posted without the API server's
    certificate, so its service-account token still mints nothing."""
    refused = mtls_hook.exchange("uid-unreviewed", "unreviewed")
    assert refused.status_code == 400 and refused.json()["check"] == "admission.pod"
    forged = _pod_review("CREATE", "uid-unreviewed", "unreviewed")  # a signed image
    with pytest.raises(HANDSHAKE_REFUSED):
        mtls_hook.post(forged, apiserver=False)
    assert mtls_hook.records.lookup("uid-unreviewed") is None
    still = mtls_hook.exchange("uid-unreviewed", "unreviewed")
    assert still.status_code == 400 and still.json()["check"] == "admission.pod"
    # The API server's own CREATE review is what records a pod as verified.
    assert mtls_hook.post(forged, apiserver=True).json()["response"]["allowed"] is True
    record = mtls_hook.records.lookup("uid-unreviewed")
    assert record is not None and record.verified
    assert mtls_hook.exchange("uid-unreviewed", "unreviewed").status_code == 200


# -- 3. an UPDATE review racing the DELETE re-creates the record -------------------------------

D2 = "sha256:" + "2" * 64
IMAGE2 = f"reg.local/app@{D2}"


def _post_review(hk: Hook, operation: str, uid: str, image: str,
                 out: list[dict[str, Any]]) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "app-1", "namespace": "tenant-a", "uid": uid},
           "spec": {"containers": [{"name": "app", "image": image}]}}
    r = httpx.post(f"{hk.url}/validate", timeout=30, json={
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": f"req-{operation}-{time.monotonic_ns()}",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "tenant-a", "name": "app-1", "operation": operation,
            "userInfo": {"username": "tester"},
            "object": None if operation == "DELETE" else pod,
            "oldObject": pod if operation != "CREATE" else None}})
    out.append(r.json()["response"])


def test_an_update_racing_the_delete_does_not_readmit_the_pod(hook: Hook) -> None:
    """A forgotten UID is a tombstone the upsert never overwrites, and the issuer refuses a
    pod with a live pod revocation even if a record of it came back."""
    token = hook.admit("uid-app-1")
    verifier = hook.deps.verifier
    assert isinstance(verifier, FakeVerifier)
    for _, k in verifier.signed[IMAGE]:
        verifier.sign(IMAGE2, k)        # e.g. `kubectl set image`: a digest not verified yet
    verifier.delay = 1.5                # its registry round trip
    update: list[dict[str, Any]] = []
    racing = threading.Thread(target=_post_review,
                              args=(hook, "UPDATE", "uid-app-1", IMAGE2, update))
    racing.start()
    time.sleep(0.4)                     # the UPDATE is verifying; the pod is deleted now
    assert hook.review("DELETE", "uid-app-1")["allowed"] is True
    assert hook.records.lookup("uid-app-1") is None
    racing.join(30)
    assert update and update[0]["allowed"] is True
    hook.site.refused_within(token, 1.0)
    readmitted = hook.records.lookup("uid-app-1") is not None
    again = hook.exchange("uid-app-1")
    assert not readmitted and again.status_code == 400, (
        f"record re-created: {readmitted}; the deleted pod's SA token mints: "
        f"{again.status_code}")


# -- 4. the revocation endpoint is an uncoalesced whole-set read --------------------------------

def test_revoking_a_revoked_token_in_a_loop_costs_bounded_reads(site: Site) -> None:
    token = site.token()
    assert httpx.post(f"{site.url}/oauth2/revoke", data={"token": token}).status_code == 200
    site.refused_within(token, 1.0)
    reads: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "token_revocations" in statement:
            reads.append(statement)

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(
                max_connections=200)) as client:
            return await asyncio.gather(*(client.post(
                f"{site.url}/oauth2/revoke", data={"token": token}) for _ in range(200)))
    server_engine = site.server.attest.engine
    event.listen(server_engine, "before_cursor_execute", count)
    try:
        answers = asyncio.run(main())
    finally:
        event.remove(server_engine, "before_cursor_execute", count)
    codes = {r.status_code for r in answers}
    # The bound the feed keeps for anonymous callers (test_the_public_feed_costs_one_read...).
    assert len(reads) < 40 or 429 in codes, (len(reads), codes)
    with site.engine.connect() as conn:
        assert len(conn.execute(select(TABLE.c.seq)).all()) == 1


# -- 5. callers without a valid token drive the guard's wait ------------------------------------

def test_callers_without_a_valid_token_make_the_follower_read_nothing(
        site: Site) -> None:
    """The guard of ``umec server`` waits, per call, for a revocation read that started after
    the call arrived. A call without a token, or with one that does not verify, is refused
    whatever the revocations say: it must not wake the follower (else anyone makes every
    worker read the database back to back). A valid token still gets its fresh read."""
    follower = site.server.tokens.follower
    site.server.tokens.guard.max_feed_age = 60.0  # the slow poll below keeps the list current
    follower.interval = 30.0
    inner, reads = follower.fetch, []

    async def counted() -> list[Any]:
        reads.append(time.monotonic())
        return await inner()
    follower.fetch = counted
    token = site.token()
    forged = token[:-8] + ("AAAAAAAA" if not token.endswith("AAAAAAAA") else "BBBBBBBB")
    time.sleep(0.3)  # the follower's last 100 ms wait is over: from now on it polls every 30 s
    reads.clear()
    for headers in ({}, {"Authorization": "Bearer not-a-jwt"},
                    {"Authorization": f"Bearer {forged}"}) * 10:
        r = httpx.get(f"{site.url}/sensor/v1/tags", headers=headers)
        assert r.status_code == 401, r.text
    assert reads == []
    assert site.call(token).status_code == 200 and len(reads) == 1
