"""The resource-server guard in front of a route, with the real token service, key ring,
revocation store and follower: every attack on an API call is refused with RFC 6750 headers
and a problem+json body; a revoked node's token is refused within the feed interval."""

from __future__ import annotations

import base64
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from keys import KeyRing, generate_private_key, sign_jwt
from tests.support.guarded_app import PROBE, Guarded, build, call, refused
from tests.support.token_service import ISSUER, TOKEN_URL, exchange
from tests.support.tokens import DpopKey


def token_for(g: Guarded, scope: str = "sensor.read", **kw: Any) -> str:
    r = exchange(g.svc, g.svc.cluster.token(), scope=scope, **kw)
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": ISSUER, "sub": "system:serviceaccount:tenant-a:app", "aud": "umec-apis",
            "iat": now, "nbf": now, "exp": now + 300, "jti": uuid.uuid4().hex,
            "scope": "sensor.read", "client_id": "tenant-a:app", "namespace": "tenant-a",
            "app_instance_id": "tenant-a.app", "node": "node-a"}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def test_valid_token_reaches_the_route(g: Guarded) -> None:
    r = call(g, token_for(g))
    assert r.status_code == 200, r.text
    assert r.json() == {"sub": "system:serviceaccount:tenant-a:app", "app": "tenant-a.app",
                        "scopes": ["sensor.read"]}


def test_no_token(g: Guarded) -> None:
    refused(call(g, None), 401, None)
    refused(call(g, "x", scheme="Basic"), 401, "invalid_request")


@pytest.mark.parametrize("over", [
    {"exp": int(time.time()) - 60},                  # expired
    {"nbf": int(time.time()) + 86400},               # not yet valid (for a day: the
                                                     # time is taken at collection)
    {"aud": "another-api"},                          # wrong audience
    {"iss": "https://evil.example/oauth2"},          # wrong issuer
    {"jti": None},                                   # missing claim
])
def test_bad_claims(g: Guarded, over: dict[str, Any]) -> None:
    refused(call(g, sign_jwt(claims(**over), g.svc.ring, headers={"typ": "at+jwt"})),
            401, "invalid_token")


def test_wrong_typ_is_refused(g: Guarded) -> None:
    # An ID token or attestation result of ours must not work as an access token.
    refused(call(g, sign_jwt(claims(), g.svc.ring)), 401, "invalid_token")


def test_alg_none(g: Guarded) -> None:
    def b64(d: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
    token = f"{b64({'alg': 'none', 'typ': 'at+jwt', 'kid': g.svc.ring.active.kid})}." \
            f"{b64(claims())}."
    refused(call(g, token), 401, "invalid_token")


def test_hs256_signed_with_the_public_key(g: Guarded) -> None:
    pem = g.svc.ring.active.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = {"kid": g.svc.ring.active.kid, "typ": "at+jwt", "alg": "HS256"}
    segments = [base64.urlsafe_b64encode(json.dumps(p).encode()).rstrip(b"=")
                for p in (header, claims())]
    import hashlib
    import hmac
    mac = hmac.new(pem, b".".join(segments), hashlib.sha256).digest()
    token = b".".join([*segments, base64.urlsafe_b64encode(mac).rstrip(b"=")]).decode()
    refused(call(g, token), 401, "invalid_token")


def test_unknown_kid(g: Guarded) -> None:
    stranger = KeyRing(generate_private_key())
    refused(call(g, sign_jwt(claims(), stranger, headers={"typ": "at+jwt"})),
            401, "invalid_token")


def test_retired_kid_after_the_overlap(g: Guarded) -> None:
    old_token = token_for(g)
    now = datetime.now(UTC)
    g.svc.ring.rotate(generate_private_key(), now, timedelta(seconds=60))
    assert call(g, old_token).status_code == 200          # within the overlap
    new_token = token_for(g)
    assert jwt.get_unverified_header(new_token)["kid"] == g.svc.ring.active.kid
    g.svc.ring.prune(now + timedelta(seconds=61))          # the overlap has ended
    g.svc.ring.rotate(generate_private_key(), now, timedelta(0))
    refused(call(g, old_token), 401, "invalid_token")


def test_a_key_rotated_on_a_clock_that_ran_ahead_stops_verifying(g: Guarded) -> None:
    """An operator rotates a leaked key away while the token service's clock runs an hour
    ahead (its overlap then ends an hour late); once the clock is right the old key is no
    longer published and its tokens are refused. Before, they verified for the step's length
    longer (the overlap's end, not_after, was all that was checked)."""
    old_token = token_for(g)
    g.svc.ring.rotate(generate_private_key(), datetime.now(UTC) + timedelta(hours=1),
                      timedelta(minutes=10))
    refused(call(g, old_token), 401, "invalid_token")
    assert call(g, token_for(g)).status_code == 200  # the new key signs and verifies


def test_scope_escalation(g: Guarded) -> None:
    r = call(g, token_for(g, scope="sensor.read"), path="/camera")
    refused(r, 403, "insufficient_scope")
    assert 'scope="camera.snapshot"' in r.headers["www-authenticate"]
    forged = claims(scope="sensor.read camera.snapshot")   # scopes only count when signed by us
    stranger = KeyRing(generate_private_key())
    refused(call(g, sign_jwt(forged, stranger, headers={"typ": "at+jwt"}), path="/camera"),
            401, "invalid_token")


def test_token_of_a_revoked_node_is_refused_within_a_second(g: Guarded) -> None:
    token = token_for(g)
    assert call(g, token).status_code == 200
    t0 = time.monotonic()
    g.svc.store.revoke_node("node-a", "attestation failed: policy.pcr_value", datetime.now(UTC),
                            through_epoch=1)
    while call(g, token).status_code == 200:
        assert time.monotonic() - t0 < 1.0, "still accepted after a second"
        time.sleep(0.01)
    r = call(g, token)
    refused(r, 401, "invalid_token")
    assert "node node-a is no longer trusted" in r.json()["detail"]


def test_revoked_token(g: Guarded) -> None:
    token = token_for(g)
    g.client.post("/oauth2/revoke", data={"token": token})
    deadline = time.monotonic() + 1.0
    while call(g, token).status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.01)
    refused(call(g, token), 401, "invalid_token")


def dpop_token(g: Guarded) -> tuple[str, DpopKey]:
    key = DpopKey()
    r = exchange(g.svc, g.svc.cluster.token(), scope="sensor.read",
                 headers={"DPoP": key.proof("POST", TOKEN_URL)})
    return str(r.json()["access_token"]), key


def test_dpop_bound_token_needs_its_proof(g: Guarded) -> None:
    token, key = dpop_token(g)
    ok = call(g, token, scheme="DPoP", DPoP=key.proof("GET", PROBE, access_token=token))
    assert ok.status_code == 200, ok.text
    refused(call(g, token), 401, "invalid_token")                      # presented as Bearer
    refused(call(g, token, scheme="DPoP"), 401, "invalid_token")       # no proof


def test_replayed_dpop_proof(g: Guarded) -> None:
    token, key = dpop_token(g)
    proof = key.proof("GET", PROBE, access_token=token)
    assert call(g, token, scheme="DPoP", DPoP=proof).status_code == 200
    refused(call(g, token, scheme="DPoP", DPoP=proof), 401, "invalid_dpop_proof")


@pytest.mark.parametrize("step", [70.0, 240.0])  # past the proof's minute, within the token's life
def test_a_replayed_dpop_proof_stays_refused_across_a_forward_clock_step(
        g: Guarded, step: float) -> None:
    """A recorded request (token and proof) replayed after the resource server's clock ran
    ahead (any proof during the step evicted what looked expired) and came back: refused.
    Before, the cache forgot every proof on the stepped clock and the replay answered 200."""
    token, key = dpop_token(g)
    proof = key.proof("GET", PROBE, access_token=token)
    assert call(g, token, scheme="DPoP", DPoP=proof).status_code == 200
    try:
        g.guard.clock = lambda: time.time() + step
        during = key.proof("GET", PROBE, access_token=token, iat=time.time() + step)
        r = call(g, token, scheme="DPoP", DPoP=during)
        assert r.status_code == 200, r.text
    finally:
        g.guard.clock = time.time
    replayed = call(g, token, scheme="DPoP", DPoP=proof)
    refused(replayed, 401, "invalid_dpop_proof")
    assert "was already used (replay)" in replayed.text, replayed.text


@pytest.mark.parametrize("wrong", ["method", "url", "ath", "key"])
def test_dpop_proof_for_another_request(g: Guarded, wrong: str) -> None:
    token, key = dpop_token(g)
    proof = {
        "method": key.proof("POST", PROBE, access_token=token),
        "url": key.proof("GET", "http://testserver/camera", access_token=token),
        "ath": key.proof("GET", PROBE, access_token=token + "x"),
        "key": DpopKey().proof("GET", PROBE, access_token=token),
    }[wrong]
    refused(call(g, token, scheme="DPoP", DPoP=proof), 401, "invalid_dpop_proof")


def test_rate_limit(tmp_path: Path) -> None:
    guarded = build(tmp_path, rate=3)
    with guarded.client:
        token = token_for(guarded)
        codes = [call(guarded, token).status_code for _ in range(6)]
        assert codes[:3] == [200, 200, 200] and 429 in codes[3:]
        r = call(guarded, token)
        refused(r, 429, None)
        assert int(r.headers["retry-after"]) >= 1


def test_stale_revocation_feed_fails_closed(g: Guarded) -> None:
    token = token_for(g)
    g.guard.max_feed_age = 5.0
    g.follower.applied_at = time.monotonic() - 60      # as if the feed had gone quiet
    g.follower.interval = 3600                         # and nothing refreshes it
    r = call(g, token)
    assert r.status_code in (200, 503)
    if r.status_code == 200:                           # the follower had a step in flight
        g.follower.applied_at = time.monotonic() - 60
        r = call(g, token)
    refused(r, 503, None)
