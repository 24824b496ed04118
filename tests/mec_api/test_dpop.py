"""DPoP proofs (RFC 9449) whose JOSE part is wrong: each refused by ``keys``' embedded-key check
(``keys.verify_embedded_key_jwt``) and answered as ``invalid_dpop_proof``/``dpop.proof``, with
the keys check id leading the description, by ``verify_dpop_proof``, the token endpoint and the
resource-server guard alike."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import get_default_algorithms

from keys import KeyKind, generate_private_key, public_jwk
from mec_api.tokens.dpop import DpopProof, DpopReplayCache, access_token_hash, verify_dpop_proof
from mec_api.tokens.errors import DpopProofInvalid
from tests.support.guarded_app import PROBE, Guarded, call
from tests.support.guarded_app import refused as guard_refused
from tests.support.token_service import TOKEN_URL, Service, exchange
from tests.support.token_service import refused as token_refused

KEY = generate_private_key(KeyKind.EC_P256)
assert isinstance(KEY, ec.EllipticCurvePrivateKey)
JWK = public_jwk(KEY)
OTHER = generate_private_key(KeyKind.EC_P256)
RSA_KEY = generate_private_key(KeyKind.RSA_2048)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def segment(obj: Any) -> str:
    return b64(json.dumps(obj, separators=(",", ":")).encode())


def es256(key: Any) -> Callable[[bytes], bytes]:
    return lambda message: get_default_algorithms()["ES256"].sign(message, key)


def hs256(secret: bytes) -> Callable[[bytes], bytes]:
    return lambda message: hmac.new(secret, message, hashlib.sha256).digest()


def proof(method: str, url: str, *, access_token: str | None = None,
          sign: Callable[[bytes], bytes] | None = None,
          claim_overrides: dict[str, Any] | None = None, **header: Any) -> str:
    """A proof for ``method`` ``url`` by KEY, with header members overridden (None drops one);
    ``sign`` replaces the ES256 signature by KEY (e.g. another key, HMAC, or nothing)."""
    full = {k: v for k, v in {"typ": "dpop+jwt", "alg": "ES256", "jwk": JWK, **header}.items()
            if v is not None}
    claims: dict[str, Any] = {"jti": uuid.uuid4().hex, "htm": method, "htu": url,
                              "iat": int(time.time())}
    if access_token is not None:
        claims["ath"] = access_token_hash(access_token)
    claims = {k: v for k, v in {**claims, **(claim_overrides or {})}.items() if v is not None}
    signing_input = f"{segment(full)}.{segment(claims)}"
    signature = (sign or es256(KEY))(signing_input.encode())
    return f"{signing_input}.{b64(signature)}"


PRIVATE_D = b64(KEY.private_numbers().private_value.to_bytes(32, "big"))
# name -> (header overrides and signer, the keys check that refuses it)
ATTACKS: dict[str, tuple[dict[str, Any], str]] = {
    "alg-none": ({"alg": "none", "sign": lambda m: b""}, "jwt.alg"),
    "alg-None": ({"alg": "None", "sign": lambda m: b""}, "jwt.alg"),
    "hs256-with-the-public-jwk": ({"alg": "HS256",
                                   "sign": hs256(json.dumps(JWK).encode())}, "jwt.alg"),
    "hs256-empty-secret": ({"alg": "HS256", "sign": hs256(b"")}, "jwt.alg"),
    "rs256-header-ec-key": ({"alg": "RS256"}, "jwt.alg"),
    "typ-jwt": ({"typ": "JWT"}, "jwt.typ"),
    "typ-missing": ({"typ": None}, "jwt.typ"),
    "typ-with-prefix": ({"typ": "application/dpop+jwt"}, "jwt.typ"),
    "jwk-with-private-d": ({"jwk": {**JWK, "d": PRIVATE_D}}, "jwt.jwk.private"),
    "jwk-symmetric": ({"jwk": {"kty": "oct", "k": b64(b"secret")}, "alg": "ES256"},
                      "jwt.jwk.private"),
    "jwk-missing": ({"jwk": None}, "jwt.jwk"),
    "jwk-of-rsa-for-es256": ({"jwk": public_jwk(RSA_KEY)}, "jwt.alg"),
    "signed-by-another-key": ({"sign": es256(OTHER)}, "jwt.signature"),
    "unsigned": ({"sign": lambda m: b""}, "jwt.signature"),
    "crit": ({"crit": ["htm"]}, "jwt.malformed"),
}


def attack_proof(name: str, method: str, url: str, access_token: str | None = None) -> str:
    overrides = dict(ATTACKS[name][0])
    return proof(method, url, access_token=access_token, **overrides)


def test_the_unattacked_proof_verifies() -> None:
    """The harness: without the attack the same construction passes."""
    result = verify_dpop_proof(proof("POST", TOKEN_URL), method="POST", url=TOKEN_URL,
                               now=time.time())
    assert result.jkt


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_verify_dpop_proof_refuses(name: str) -> None:
    with pytest.raises(DpopProofInvalid) as info:
        verify_dpop_proof(attack_proof(name, "POST", TOKEN_URL), method="POST", url=TOKEN_URL,
                          now=time.time())
    check = ATTACKS[name][1]
    assert info.value.check == "dpop.proof" and info.value.as_dict()["error"] == \
        "invalid_dpop_proof"
    assert info.value.detail.startswith(f"{check}: "), info.value.detail


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_token_endpoint_refuses(svc: Service, name: str) -> None:
    r = exchange(svc, svc.cluster.token(),
                 headers={"DPoP": attack_proof(name, "POST", TOKEN_URL)})
    assert r.status_code == 400
    token_refused(r, "invalid_dpop_proof", "dpop.proof")
    assert r.json()["error_description"].startswith(f"{ATTACKS[name][1]}: ")


@pytest.mark.parametrize("name", ["alg-none", "hs256-with-the-public-jwk", "typ-jwt",
                                  "jwk-with-private-d", "signed-by-another-key"])
def test_guard_refuses(g: Guarded, name: str) -> None:
    issued = exchange(g.svc, g.svc.cluster.token(), scope="sensor.read",
                      headers={"DPoP": proof("POST", TOKEN_URL)})
    assert issued.status_code == 200 and issued.json()["token_type"] == "DPoP", issued.text
    token = issued.json()["access_token"]
    ok = call(g, token, scheme="DPoP", DPoP=proof("GET", PROBE, access_token=token))
    assert ok.status_code == 200, ok.text  # the harness: the same proof, unattacked, passes
    r = call(g, token, scheme="DPoP", DPoP=attack_proof(name, "GET", PROBE, token))
    guard_refused(r, 401, "invalid_dpop_proof")
    assert f'error_description="{ATTACKS[name][1]}: ' in r.headers["www-authenticate"]


class _Monotonic:
    at = 0.0

    def __call__(self) -> float:
        return self.at


def test_the_replay_cache_forgets_a_proof_only_when_both_clocks_say_so() -> None:
    """A proof is forgotten when its ``iat`` window has passed on the wall clock and its hold
    on the monotonic clock: a wall clock stepped ahead (then corrected) or back (so the proof's
    ``iat`` is in the window again) lets no replay through, and both passing frees the entry."""
    mono = _Monotonic()
    cache = DpopReplayCache(lifetime=65.0, monotonic=mono)
    t0 = 1_000_000.0
    seen = DpopProof(jkt="k", jti="J", iat=t0)
    cache.check_and_remember(seen, t0)
    cache.check_and_remember(DpopProof("k", "ahead", t0 + 600), t0 + 600)  # a forward step
    with pytest.raises(DpopProofInvalid, match="already used"):
        cache.check_and_remember(seen, t0 + 10)                           # corrected
    mono.at += 600                                                        # 10 min later, …
    cache.check_and_remember(DpopProof("k", "back", t0 + 20), t0 + 20)    # … the wall back
    with pytest.raises(DpopProofInvalid, match="already used"):
        cache.check_and_remember(seen, t0 + 20)
    cache.check_and_remember(DpopProof("k", "late", t0 + 700), t0 + 700)  # both have passed
    cache.check_and_remember(seen, t0 + 30)   # forgotten (iat outside the window anyway)


@pytest.mark.parametrize(("claim", "value"), [
    ("jti", None), ("jti", ""), ("htm", None), ("htm", ""), ("htu", None),
    ("htu", ["https://x"])])
def test_a_proof_without_a_string_jti_htm_or_htu_is_refused(claim: str, value: Any) -> None:
    bad = proof("POST", TOKEN_URL, claim_overrides={claim: value})
    with pytest.raises(DpopProofInvalid, match=f"claim '{claim}' is missing"):
        verify_dpop_proof(bad, method="POST", url=TOKEN_URL, now=time.time())


def test_a_full_replay_cache_refuses_new_proofs_and_forgets_none() -> None:
    """Fail closed when full: the proof that would overflow is refused, and the proofs held
    are still refused as replays (none was forgotten to make room)."""
    cache = DpopReplayCache(max_entries=2, monotonic=_Monotonic())
    for jti in ("a", "b"):
        cache.check_and_remember(DpopProof("k", jti, 1000.0), 1000.0)
    with pytest.raises(DpopProofInvalid, match="too many proofs in flight"):
        cache.check_and_remember(DpopProof("k", "c", 1000.0), 1000.0)
    with pytest.raises(DpopProofInvalid, match="already used"):
        cache.check_and_remember(DpopProof("k", "a", 1000.0), 1000.0)


def test_a_proof_is_forgotten_exactly_when_both_holds_end() -> None:
    """At the instant both the ``iat`` window (wall) and the hold (monotonic) end, the proof is
    forgotten (its ``iat`` is outside the window by then, so no replay can pass)."""
    mono = _Monotonic()
    cache = DpopReplayCache(lifetime=65.0, monotonic=mono)
    seen = DpopProof("k", "J", 1000.0)
    cache.check_and_remember(seen, 1000.0)
    mono.at += 65.0
    cache.check_and_remember(seen, 1065.0)  # forgotten at 1065 / +65: remembered afresh
    with pytest.raises(DpopProofInvalid, match="already used"):
        cache.check_and_remember(seen, 1065.0)
