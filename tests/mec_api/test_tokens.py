"""The token service over HTTP: RFC 8693 exchange and RFC 7523 client credentials for attested
workloads, and each way of asking for a token it must refuse."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest

from keys import KeyKind, generate_private_key
from mec_api.tokens.issuer import (
    JWT_BEARER_ASSERTION,
    TOKEN_EXCHANGE,
    TOKEN_TYPE_ACCESS,
    TOKEN_TYPE_JWT,
)
from tests.support.token_service import (
    BASE,
    ISSUER,
    OPERATOR,
    TOKEN_URL,
    Service,
    exchange,
    refused,
)
from tests.support.tokens import D1, D2, DpopKey


def claims_of(svc: Service, token: str) -> dict[str, Any]:
    key = svc.ring.active.private_key.public_key()
    return dict(jwt.decode(token, key, algorithms=["ES256"], audience="umec-apis"))


# --- issuing -------------------------------------------------------------------------------------

def test_exchange_issues_a_scoped_short_lived_token(svc: Service) -> None:
    r = exchange(svc, svc.cluster.token(), scope="sensor.read inference.classify")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "Bearer" and body["issued_token_type"] == TOKEN_TYPE_ACCESS
    assert 0 < body["expires_in"] <= 300 and r.headers["cache-control"] == "no-store"
    claims = claims_of(svc, body["access_token"])
    assert jwt.get_unverified_header(body["access_token"])["typ"] == "at+jwt"
    assert claims["iss"] == ISSUER and claims["aud"] == "umec-apis"
    assert claims["sub"] == "system:serviceaccount:tenant-a:app"
    assert claims["scope"] == "inference.classify sensor.read" == body["scope"]
    assert claims["node"] == "node-a" and claims["images"] == [D1]
    assert claims["client_id"] == "tenant-a:app" and claims["app_instance_id"] == "tenant-a.app"
    assert claims["exp"] - claims["iat"] <= 300 and claims["nbf"] == claims["iat"]
    assert {"jti", "iat"} <= set(claims) and "cnf" not in claims


def test_token_never_outlives_the_subject_token(svc: Service) -> None:
    body = exchange(svc, svc.cluster.token(lifetime=60)).json()
    assert body["expires_in"] <= 60


def test_client_credentials_with_the_sa_token_as_assertion(svc: Service) -> None:
    assertion = svc.cluster.token(audience=[TOKEN_URL])  # RFC 7523: aud = token endpoint
    r = svc.client.post("/oauth2/token", data={
        "grant_type": "client_credentials", "client_assertion_type": JWT_BEARER_ASSERTION,
        "client_assertion": assertion, "client_id": "tenant-a:app", "scope": "sensor.read"})
    assert r.status_code == 200, r.text
    assert "issued_token_type" not in r.json() and r.json()["scope"] == "sensor.read"
    wrong_client = svc.client.post("/oauth2/token", data={
        "grant_type": "client_credentials", "client_assertion_type": JWT_BEARER_ASSERTION,
        "client_assertion": assertion, "client_id": "tenant-b:app"})
    refused(wrong_client, "invalid_client", "client.assertion")
    assert wrong_client.status_code == 401 and "WWW-Authenticate" in wrong_client.headers


def test_scope_escalation_gets_only_what_is_granted(svc: Service) -> None:
    body = exchange(svc, svc.cluster.token(), scope="sensor.read sensor.ingest").json()
    assert body["scope"] == "sensor.read"           # ingest is the platform's, never a tenant's
    refused(exchange(svc, svc.cluster.token(), scope="sensor.ingest mec011.services.write"),
            "invalid_scope", "scope.granted")


def test_dpop_bound_token(svc: Service) -> None:
    key = DpopKey()
    r = exchange(svc, svc.cluster.token(), headers={"DPoP": key.proof("POST", TOKEN_URL)})
    assert r.status_code == 200, r.text
    assert r.json()["token_type"] == "DPoP"
    from keys import jwk_thumbprint
    assert claims_of(svc, r.json()["access_token"])["cnf"] == {"jkt": jwk_thumbprint(key.jwk)}


# --- attacks on the token endpoint ----------------------------------------------------------------

def test_sa_token_for_another_audience(svc: Service) -> None:
    refused(exchange(svc, svc.cluster.token(audience=["vault"])), "invalid_grant",
            "subject.token")


def test_forged_sa_token(svc: Service) -> None:
    forger = generate_private_key(KeyKind.RSA_2048)   # same kid, another key
    refused(exchange(svc, svc.cluster.token(key=forger)), "invalid_grant", "subject.token")


def test_sa_token_from_another_issuer_and_expired(svc: Service) -> None:
    refused(exchange(svc, svc.cluster.token(issuer="https://evil.example")),
            "invalid_grant", "subject.token")
    old = svc.cluster.token(now=time.time() - 7200, lifetime=600)
    r = exchange(svc, old)
    refused(r, "invalid_grant", "subject.token")
    assert "jwt.exp" in r.json()["error_description"]


def test_legacy_or_podless_tokens_are_refused(svc: Service) -> None:
    refused(exchange(svc, svc.cluster.token(drop=("kubernetes.io.pod",))),
            "invalid_grant", "subject.identity")
    refused(exchange(svc, svc.cluster.token(drop=("kubernetes.io.node",))),
            "invalid_grant", "subject.identity")
    refused(exchange(svc, svc.cluster.token(drop=("exp",))), "invalid_grant", "subject.token")


def test_cluster_key_rotation_is_picked_up_once(svc: Service) -> None:
    svc.cluster.ring.rotate(generate_private_key(KeyKind.RSA_2048), datetime.now(UTC),
                            timedelta(hours=1))
    assert exchange(svc, svc.cluster.token()).status_code == 200
    unknown = svc.cluster.token(kid="no-such-kid")
    before = svc.cluster.refreshes
    r = exchange(svc, unknown)
    refused(r, "invalid_grant", "subject.token")
    assert "jwt.kid" in r.json()["error_description"]
    assert svc.cluster.refreshes == before + 1


def test_pod_whose_image_was_not_admitted(svc: Service) -> None:
    refused(exchange(svc, svc.cluster.token(pod="rogue", pod_uid="uid-rogue")),
            "invalid_grant", "admission.pod")
    svc.admissions.admit(uid="uid-warn", name="warn-1", verified=False)
    refused(exchange(svc, svc.cluster.token(pod="warn-1", pod_uid="uid-warn")),
            "invalid_grant", "admission.pod")
    svc.admissions.admit(uid="uid-half", name="half-1", signers=(), digests=(D1, D2))
    r = exchange(svc, svc.cluster.token(pod="half-1", pod_uid="uid-half"))
    refused(r, "invalid_grant", "admission.pod")
    assert "spec.containers[1]" in r.json()["error_description"]


def test_record_of_another_tenant_does_not_count(svc: Service) -> None:
    # tenant-b's token naming a pod UID that was admitted in tenant-a.
    refused(exchange(svc, svc.cluster.token(namespace="tenant-b")), "invalid_grant",
            "admission.pod")


@pytest.mark.parametrize("state,age", [("untrusted", 1.0), ("stale", 1.0), ("enrolled", -1),
                                       ("trusted", 600.0), ("trusted", -1)])
def test_node_not_trusted_now(svc: Service, state: str, age: float) -> None:
    svc.nodes.set("node-a", state, age)
    refused(exchange(svc, svc.cluster.token()), "invalid_grant", "node.trust")


def test_unknown_node(svc: Service) -> None:
    refused(exchange(svc, svc.cluster.token(node="node-z")), "invalid_grant", "node.trust")


def test_node_whose_trust_epoch_is_revoked_is_refused(svc: Service) -> None:
    svc.store.revoke_node("node-a", "test", datetime.now(UTC), through_epoch=1)
    r = exchange(svc, svc.cluster.token())
    refused(r, "invalid_grant", "node.trust")
    assert "trust epoch 1 is revoked" in r.json()["error_description"]
    # Trusted again in a new epoch: tokens at once, no clock to wait for (issue 9.7).
    svc.nodes.set("node-a", epoch=2)
    assert claims_of(svc, exchange(svc, svc.cluster.token()).json()["access_token"])[
        "node_epoch"] == 2


@pytest.mark.parametrize("future", [10.0, 600.0, 7200.0])
def test_evidence_dated_in_the_future_is_no_proof_of_freshness(svc: Service,
                                                               future: float) -> None:
    """After a backward step of the server's clock, last_pass_at lies ahead: refused."""
    svc.nodes.set("node-a", age=-1000 - future)
    r = exchange(svc, svc.cluster.token())
    refused(r, "invalid_grant", "node.trust")
    assert "stepped back" in r.json()["error_description"]
    svc.nodes.set("node-a", age=-1001)  # within the 2 s tolerance: fine
    assert exchange(svc, svc.cluster.token()).status_code == 200


@pytest.mark.parametrize("data,error,check", [
    ({"grant_type": "password", "username": "x"}, "unsupported_grant_type",
     "request.grant_type"),
    ({"grant_type": TOKEN_EXCHANGE, "subject_token": "x"}, "invalid_request",
     "request.parameters"),
    ({"grant_type": TOKEN_EXCHANGE, "subject_token": "x", "subject_token_type": TOKEN_TYPE_JWT,
      "actor_token": "y"}, "invalid_request", "request.parameters"),
    ({"grant_type": "client_credentials"}, "invalid_client", "client.assertion"),
    ({"grant_type": TOKEN_EXCHANGE, "subject_token": "not.a.jwt",
      "subject_token_type": TOKEN_TYPE_JWT}, "invalid_grant", "subject.token"),
])
def test_malformed_requests(svc: Service, data: dict[str, str], error: str, check: str) -> None:
    refused(svc.client.post("/oauth2/token", data=data), error, check)


def test_unknown_audience(svc: Service) -> None:
    refused(exchange(svc, svc.cluster.token(), audience="https://elsewhere"),
            "invalid_target", "request.audience")


@pytest.mark.parametrize("mutate", ["replay", "method", "url", "old", "typ", "private"])
def test_bad_dpop_proofs_at_the_token_endpoint(svc: Service, mutate: str) -> None:
    key = DpopKey()
    proof = {
        "replay": key.proof("POST", TOKEN_URL, jti="same"),
        "method": key.proof("GET", TOKEN_URL),
        "url": key.proof("POST", f"{BASE}/elsewhere"),
        "old": key.proof("POST", TOKEN_URL, iat=time.time() - 600),
        "typ": key.proof("POST", TOKEN_URL, typ="JWT"),
        "private": key.proof("POST", TOKEN_URL, jwk={**key.jwk, "d": "AAAA"}),
    }[mutate]
    if mutate == "replay":
        assert exchange(svc, svc.cluster.token(), headers={"DPoP": proof}).status_code == 200
    refused(exchange(svc, svc.cluster.token(), headers={"DPoP": proof}),
            "invalid_dpop_proof", "dpop.proof")


# --- metadata, introspection, revocation ---------------------------------------------------------

def test_metadata_and_jwks(svc: Service) -> None:
    meta = svc.client.get("/.well-known/oauth-authorization-server").json()
    assert meta["issuer"] == ISSUER and meta["token_endpoint"] == TOKEN_URL
    assert TOKEN_EXCHANGE in meta["grant_types_supported"]
    assert "sensor.read" in meta["scopes_supported"]
    jwks = svc.client.get("/.well-known/jwks.json").json()
    assert [k["kid"] for k in jwks["keys"]] == [svc.ring.active.kid]
    assert all("d" not in k for k in jwks["keys"])


def test_introspection_needs_the_operator_credential(svc: Service) -> None:
    token = exchange(svc, svc.cluster.token(), scope="sensor.read").json()["access_token"]
    assert svc.client.post("/oauth2/introspect", data={"token": token}).status_code == 401
    auth = {"Authorization": f"Bearer {OPERATOR}"}
    info = svc.client.post("/oauth2/introspect", data={"token": token}, headers=auth).json()
    assert info["active"] is True and info["scope"] == "sensor.read"
    assert info["sub"] == "system:serviceaccount:tenant-a:app" and info["token_type"] == "Bearer"
    for junk in ("", "x.y.z", token[:-4] + "AAAA"):
        assert svc.client.post("/oauth2/introspect", data={"token": junk},
                               headers=auth).json() == {"active": False}


def test_revocation_by_the_holder_and_the_feed(svc: Service) -> None:
    token = exchange(svc, svc.cluster.token()).json()["access_token"]
    jti = claims_of(svc, token)["jti"]
    assert svc.client.post("/oauth2/revoke", data={"token": token}).status_code == 200
    assert svc.client.post("/oauth2/revoke", data={"token": "garbage"}).status_code == 200
    auth = {"Authorization": f"Bearer {OPERATOR}"}
    assert svc.client.post("/oauth2/introspect", data={"token": token},
                           headers=auth).json() == {"active": False}
    feed = svc.client.get("/oauth2/revocations").json()
    assert feed["complete"] is True
    assert [(e["kind"], e["jti"]) for e in feed["entries"]] == [("token", jti)]
    svc.store.revoke_node("node-a", "attestation failed", datetime.now(UTC), through_epoch=3)
    # ``after`` (older followers send it) changes nothing: the whole live set.
    later = svc.client.get("/oauth2/revocations", params={"after": 1}).json()
    assert [(e["kind"], e["jti"] or e["node"], e["node_epoch"]) for e in later["entries"]] == [
        ("token", jti, None), ("node", "node-a", 3)]
    assert later["since"] is None and later["generation"] == feed["generation"] + 1
    newer = svc.client.get("/oauth2/revocations",
                           params={"since": feed["generation"]}).json()
    assert [(e["kind"], e["node"]) for e in newer["entries"]] == [("node", "node-a")]


def test_unreachable_cluster_keys_refuse_with_503(svc: Service) -> None:
    class Down:
        def jwks(self, *, refresh: bool = False) -> dict[str, Any]:
            raise OSError("connection refused")
    svc.issuer.cluster_keys = Down()
    r = exchange(svc, svc.cluster.token())
    assert r.status_code == 503 and r.json()["error"] == "temporarily_unavailable"
    assert r.json()["check"] == "subject.cluster_keys" and "Traceback" not in r.text
