"""keys.tokens: JWT signing and strict verification, including the classic JWT attacks."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.hashes import SHA256
from hypothesis import given, settings
from hypothesis import strategies as st
from jwt import exceptions as jwt_errors

import keys
from keys import (
    JwkInvalid,
    JwtAlgorithmNotAllowed,
    JwtBadSignature,
    JwtExpired,
    JwtInvalid,
    JwtMalformed,
    JwtMissingClaim,
    JwtNotYetValid,
    JwtUnknownKid,
    JwtWrongAudience,
    JwtWrongIssuer,
    JwtWrongType,
    KeyKind,
    KeyRing,
    PrivateKey,
)
from keys.tokens import map_pyjwt_error

ISS, AUD = "https://umec.test/oauth2", "mec011"
NOW = 1_800_000_000.0
T_NOW = datetime.fromtimestamp(NOW, tz=UTC)


@pytest.fixture(scope="module")
def all_keys() -> dict[KeyKind, PrivateKey]:
    return {kind: keys.generate_private_key(kind) for kind in KeyKind}


@pytest.fixture()
def ring(all_keys: dict[KeyKind, PrivateKey]) -> KeyRing:
    return KeyRing(all_keys[KeyKind.EC_P256])


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"iss": ISS, "aud": AUD, "sub": "app-1", "iat": int(NOW),
                            "exp": int(NOW) + 300, "scope": "mec011.read"}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def verify(token: Any, jwks: Any, **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"algorithms": ["ES256", "RS256", "PS256", "EdDSA"], "issuer": ISS,
                            "audience": AUD, "now": NOW}
    args.update(kw)
    return keys.verify_jwt(token, jwks, **args)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(obj: Any) -> str:
    return b64(json.dumps(obj, separators=(",", ":")).encode())


def forge(header: dict[str, Any], payload: dict[str, Any],
          sign: Callable[[bytes], bytes] | None = None) -> str:
    """A compact JWS built by hand, so that pyjwt's encoder safeguards cannot get in the way."""
    signing_input = f"{segment(header)}.{segment(payload)}".encode()
    return f"{signing_input.decode()}.{b64(sign(signing_input)) if sign else ''}"


def _hmac(secret: bytes, digest: Callable[[], Any], message: bytes) -> bytes:
    return hmac.new(secret, message, digest).digest()


def raises(error: type[JwtInvalid], call: Callable[[], object]) -> JwtInvalid:
    with pytest.raises(JwtInvalid) as info:
        call()
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    assert info.value.hint
    return info.value


# --- valid tokens ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind, alg", [(KeyKind.EC_P256, "ES256"), (KeyKind.RSA_2048, "RS256"),
                                       (KeyKind.RSA_3072, "PS256"), (KeyKind.ED25519, "EdDSA")])
def test_valid_tokens_of_every_kind(all_keys: dict[KeyKind, PrivateKey], kind: KeyKind,
                                    alg: str) -> None:
    ring = KeyRing(all_keys[kind], alg=alg)
    token = keys.sign_jwt(claims(), ring, headers={"typ": "at+jwt"})
    header = pyjwt.get_unverified_header(token)
    assert header == {"alg": alg, "kid": ring.active.kid, "typ": "at+jwt"}
    # Verified against the ring, its JWKS as JSON, and its JWKS without "alg" members.
    jwks = json.loads(json.dumps(ring.jwks(T_NOW)))
    no_alg = {"keys": [{k: v for k, v in e.items() if k != "alg"} for e in jwks["keys"]]}
    for source in (ring, jwks, no_alg):
        assert verify(token, source, algorithms=[alg], typ="at+jwt") == claims()
    assert verify(token.encode(), ring, algorithms=[alg]) == claims()


def test_default_typ_and_expectations(ring: KeyRing) -> None:
    token = keys.sign_jwt(claims(), ring)
    assert pyjwt.get_unverified_header(token)["typ"] == "JWT"
    raises(JwtWrongType, lambda: verify(token, ring, typ="at+jwt"))
    at = keys.sign_jwt(claims(), ring, headers={"typ": "application/AT+JWT"})
    assert verify(at, ring, typ="at+jwt")["sub"] == "app-1"  # RFC 7515 §4.1.9 comparison


def test_audience_list_and_optional_audience(ring: KeyRing) -> None:
    assert verify(keys.sign_jwt(claims(aud=["other", AUD]), ring), ring)["aud"] == ["other", AUD]
    no_aud = keys.sign_jwt(claims(aud=None), ring)
    assert "aud" not in verify(no_aud, ring, audience=None)
    raises(JwtMissingClaim, lambda: verify(no_aud, ring))
    raises(JwtWrongAudience, lambda: verify(keys.sign_jwt(claims(), ring), ring, audience=None))


# --- the classic attacks ---------------------------------------------------------------------


def test_alg_none_is_rejected(ring: KeyRing) -> None:
    for alg in ("none", "None", "NONE", "nOnE"):
        token = forge({"alg": alg, "kid": ring.active.kid, "typ": "JWT"}, claims())
        raises(JwtAlgorithmNotAllowed, partial(verify, token, ring))
    with pytest.raises(ValueError, match="not allowed"):
        verify(keys.sign_jwt(claims(), ring), ring, algorithms=["ES256", "none"])


def test_hs256_signed_with_the_public_key_pem_is_rejected(
        all_keys: dict[KeyKind, PrivateKey]) -> None:
    for kind in (KeyKind.RSA_2048, KeyKind.EC_P256):
        ring = KeyRing(all_keys[kind])
        secret = keys.public_key_pem(all_keys[kind])
        for alg, digest in (("HS256", hashlib.sha256), ("HS512", hashlib.sha512)):
            token = forge({"alg": alg, "kid": ring.active.kid}, claims(),
                          partial(_hmac, secret, digest))
            raises(JwtAlgorithmNotAllowed, partial(verify, token, ring))
            raises(JwtAlgorithmNotAllowed, partial(verify, token, ring.jwks(T_NOW)))
    with pytest.raises(ValueError):
        verify("x.y.z", {"keys": []}, algorithms=["HS256"])


def test_unknown_kid_and_missing_kid(ring: KeyRing, all_keys: dict[KeyKind, PrivateKey]) -> None:
    stranger = KeyRing(all_keys[KeyKind.ED25519])
    err = raises(JwtUnknownKid, lambda: verify(keys.sign_jwt(claims(), stranger), ring))
    assert stranger.active.kid in err.detail
    no_kid = pyjwt.encode(claims(), all_keys[KeyKind.EC_P256], algorithm="ES256")
    raises(JwtMalformed, lambda: verify(no_kid, ring))
    numeric_kid = forge({"alg": "ES256", "kid": 7}, claims())
    raises(JwtMalformed, lambda: verify(numeric_kid, ring))


def test_embedded_jwk_header_is_never_trusted(ring: KeyRing) -> None:
    attacker = ec.generate_private_key(ec.SECP256R1())
    attacker_jwk = keys.public_jwk(attacker)
    for kid in (keys.key_thumbprint(attacker), ring.active.kid):
        token = pyjwt.encode(claims(), attacker, algorithm="ES256",
                             headers={"kid": kid, "jwk": attacker_jwk,
                                      "jku": "https://evil.test/jwks"})
        expected = JwtBadSignature if kid == ring.active.kid else JwtUnknownKid
        raises(expected, partial(verify, token, ring))


def test_retired_key_verifies_during_overlap_only(all_keys: dict[KeyKind, PrivateKey]) -> None:
    ring = KeyRing(all_keys[KeyKind.EC_P256])
    old_token = keys.sign_jwt(claims(exp=int(NOW) + 3600), ring)
    ring.rotate(all_keys[KeyKind.ED25519], T_NOW, timedelta(minutes=10))
    new_token = keys.sign_jwt(claims(exp=int(NOW) + 3600), ring)
    assert pyjwt.get_unverified_header(new_token)["alg"] == "EdDSA"
    during = NOW + 599
    after = NOW + 600
    assert verify(old_token, ring, now=during)["sub"] == "app-1"
    assert verify(old_token, ring.jwks(T_NOW + timedelta(seconds=599)), now=during)
    raises(JwtUnknownKid, lambda: verify(old_token, ring, now=after))
    raises(JwtUnknownKid,
           lambda: verify(old_token, ring.jwks(T_NOW + timedelta(seconds=600)), now=after))
    assert verify(new_token, ring, now=after)["sub"] == "app-1"
    ring.prune(T_NOW + timedelta(seconds=600))
    raises(JwtUnknownKid, lambda: verify(old_token, ring, now=during))  # forgotten for good


def test_expired_and_leeway(ring: KeyRing) -> None:
    token = keys.sign_jwt(claims(exp=int(NOW)), ring)
    raises(JwtExpired, lambda: verify(token, ring, leeway=0))
    assert verify(token, ring, leeway=1)
    assert verify(token, ring, leeway=timedelta(seconds=1))
    raises(JwtExpired, lambda: verify(token, ring, now=NOW + 30))  # default leeway is 30 s
    assert verify(token, ring, now=NOW + 29.5)


def test_not_yet_valid(ring: KeyRing) -> None:
    raises(JwtNotYetValid, lambda: verify(keys.sign_jwt(claims(nbf=int(NOW) + 60), ring), ring))
    raises(JwtNotYetValid, lambda: verify(keys.sign_jwt(claims(iat=int(NOW) + 60), ring), ring))
    assert verify(keys.sign_jwt(claims(nbf=int(NOW) + 20), ring), ring)  # within leeway
    raises(JwtNotYetValid, lambda: verify(keys.sign_jwt(claims(nbf=int(NOW) + 20), ring), ring,
                                          leeway=0))


def test_wrong_audience_and_issuer(ring: KeyRing) -> None:
    raises(JwtWrongAudience, lambda: verify(keys.sign_jwt(claims(aud="sensor"), ring), ring))
    raises(JwtWrongAudience, lambda: verify(keys.sign_jwt(claims(aud=["a", "b"]), ring), ring))
    raises(JwtWrongIssuer, lambda: verify(keys.sign_jwt(claims(iss="https://evil"), ring), ring))
    ed = ed25519.Ed25519PrivateKey.generate()
    ed_ring = KeyRing(ed)
    numeric_iss = forge({"alg": "EdDSA", "kid": ed_ring.active.kid}, claims(iss=5), ed.sign)
    raises(JwtWrongIssuer, lambda: verify(numeric_iss, ed_ring))


def test_missing_required_claims(ring: KeyRing) -> None:
    for claim in ("exp", "iat", "iss"):
        err = raises(JwtMissingClaim,
                     partial(verify, keys.sign_jwt(claims(**{claim: None}), ring), ring))
        assert claim in err.detail
    jti_required = keys.sign_jwt(claims(), ring)
    raises(JwtMissingClaim, lambda: verify(jti_required, ring,
                                           required_claims=("exp", "iat", "iss", "jti")))


def test_tampered_payload_and_signature(ring: KeyRing, all_keys: dict[KeyKind, PrivateKey]
                                        ) -> None:
    for kind in KeyKind:
        r = KeyRing(all_keys[kind])
        token = keys.sign_jwt(claims(), r)
        head, _, sig = token.split(".")
        elevated = f"{head}.{segment(claims(scope='mec011.admin'))}.{sig}"
        raises(JwtBadSignature, partial(verify, elevated, r))
        raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
        raw[len(raw) // 2] ^= 0x01
        flipped = f"{head}.{token.split('.')[1]}.{b64(bytes(raw))}"
        raises(JwtBadSignature, partial(verify, flipped, r))
        stripped = f"{head}.{token.split('.')[1]}."
        raises(JwtBadSignature, partial(verify, stripped, r))


def test_key_of_the_wrong_type_for_the_header_alg(all_keys: dict[KeyKind, PrivateKey]) -> None:
    ec_key, rsa_key = all_keys[KeyKind.EC_P256], all_keys[KeyKind.RSA_2048]
    assert isinstance(rsa_key, rsa.RSAPrivateKey)
    ring = KeyRing(ec_key)
    # Header says RS256 and names the EC key; the token really is RSA-signed.
    token = forge({"alg": "RS256", "kid": ring.active.kid}, claims(),
                  lambda m: rsa_key.sign(m, padding.PKCS1v15(), SHA256()))
    jwks = ring.jwks(T_NOW)
    no_alg = {"keys": [{k: v for k, v in e.items() if k != "alg"} for e in jwks["keys"]]}
    for source in (ring, jwks, no_alg):
        raises(JwtAlgorithmNotAllowed, partial(verify, token, source))
    # A JWKS whose entry lies about its alg (RSA key labelled ES256) cannot be abused either.
    rsa_ring = KeyRing(rsa_key)
    lying = {"keys": [{**rsa_ring.jwks(T_NOW)["keys"][0], "alg": "ES256"}]}
    es_token = forge({"alg": "ES256", "kid": rsa_ring.active.kid}, claims(),
                     lambda m: b"\x00" * 64)
    raises(JwtAlgorithmNotAllowed, lambda: verify(es_token, lying))
    # PS256 token for a key the JWKS pins to RS256 (and the reverse).
    ps = keys.sign_jwt(claims(), KeyRing(rsa_key, alg="PS256"))
    raises(JwtAlgorithmNotAllowed, lambda: verify(ps, rsa_ring))
    raises(JwtAlgorithmNotAllowed,
           lambda: verify(keys.sign_jwt(claims(), rsa_ring), KeyRing(rsa_key, alg="PS256")))


def test_algorithm_not_pinned_by_the_caller(ring: KeyRing, all_keys: dict[KeyKind, PrivateKey]
                                            ) -> None:
    token = keys.sign_jwt(claims(), ring)
    raises(JwtAlgorithmNotAllowed, lambda: verify(token, ring, algorithms=["EdDSA", "RS256"]))
    ed = KeyRing(all_keys[KeyKind.ED25519])
    raises(JwtAlgorithmNotAllowed, lambda: verify(keys.sign_jwt(claims(), ed), ed,
                                                  algorithms=["ES256"]))


def test_encryption_keys_do_not_verify_signatures(ring: KeyRing) -> None:
    token = keys.sign_jwt(claims(), ring)
    enc = {"keys": [{**ring.jwks(T_NOW)["keys"][0], "use": "enc"}]}
    raises(JwtAlgorithmNotAllowed, lambda: verify(token, enc))


def test_unusable_or_ambiguous_jwks_entries(ring: KeyRing) -> None:
    token = keys.sign_jwt(claims(), ring)
    (entry,) = ring.jwks(T_NOW)["keys"]
    leaky = {"keys": [{**entry, "d": "AAAA"}]}
    raises(JwtUnknownKid, lambda: verify(token, leaky))
    raises(JwtUnknownKid, lambda: verify(token, {"keys": [entry, dict(entry)]}))
    raises(JwtUnknownKid, lambda: verify(token, {"keys": ["junk", 5, None]}))
    broken_jwks: list[Any] = [{}, {"keys": "x"}, [], None]
    for broken in broken_jwks:
        with pytest.raises(JwkInvalid):
            verify(token, broken)


def test_crit_and_b64_headers_are_rejected(all_keys: dict[KeyKind, PrivateKey]) -> None:
    key = all_keys[KeyKind.ED25519]
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    ring = KeyRing(key)
    extras: list[dict[str, Any]] = [{"crit": ["exp"], "exp": 1}, {"b64": False, "crit": ["b64"]},
                                    {"b64": True}, {"crit": []}]
    for extra in extras:
        token = forge({"alg": "EdDSA", "kid": ring.active.kid, **extra}, claims(), key.sign)
        raises(JwtMalformed, partial(verify, token, ring))
    assert verify(forge({"alg": "EdDSA", "kid": ring.active.kid}, claims(), key.sign), ring)


@pytest.mark.parametrize("bad", ["9999999999", True, [1], float("nan"), float("inf"), "soon"])
@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
def test_non_numeric_dates_are_malformed(ring: KeyRing, claim: str, bad: Any) -> None:
    token = keys.sign_jwt({**claims(), claim: bad}, ring)
    raises(JwtMalformed, lambda: verify(token, ring))


def test_malformed_tokens(ring: KeyRing) -> None:
    good = keys.sign_jwt(claims(), ring)
    head, body, sig = good.split(".")
    for token in ("", "a", "a.b", "a.b.c.d", f"{head}.{body}", "...", f"!!.{body}.{sig}",
                  f"{segment([1, 2])}.{body}.{sig}", f"{head}.{segment([1])}.{sig}",
                  f"{head}.{b64(b'not json')}.{sig}", "x" * 20000):
        with pytest.raises(JwtInvalid):
            verify(token, ring)
    raises(JwtMalformed, lambda: verify(12345, ring))


# --- API misuse and the clock ----------------------------------------------------------------


def test_caller_misconfiguration_is_a_value_error(ring: KeyRing) -> None:
    token = keys.sign_jwt(claims(), ring)
    for algorithms in ("ES256", [], ["HS256"], ["ES384"]):
        with pytest.raises(ValueError):
            verify(token, ring, algorithms=algorithms)
    with pytest.raises(ValueError):
        verify(token, ring, issuer="")
    for header in ("alg", "kid", "jwk", "crit"):
        with pytest.raises(ValueError, match=header):
            keys.sign_jwt(claims(), ring, headers={header: "x"})


def test_time_is_injected(ring: KeyRing, monkeypatch: pytest.MonkeyPatch) -> None:
    # exp lies far in the real past; only the injected "now" may decide.
    token = keys.sign_jwt(claims(iat=1_000_000_000, exp=1_000_000_300), ring)

    def no_clock() -> float:
        raise AssertionError("the wall clock was read")

    monkeypatch.setattr(time, "time", no_clock)
    assert verify(token, ring, now=1_000_000_100)["sub"] == "app-1"
    raises(JwtExpired, lambda: verify(token, ring, now=1_000_000_400))
    monkeypatch.undo()
    # With now=None the wall clock is used (and this token expired long ago).
    raises(JwtExpired, lambda: verify(token, ring, now=None))
    fresh = keys.sign_jwt(claims(iat=int(time.time()), exp=int(time.time()) + 60), ring)
    assert verify(fresh, ring, now=None)["sub"] == "app-1"


def test_every_pyjwt_error_is_mapped() -> None:
    expected = {
        jwt_errors.InvalidSignatureError: keys.JwtBadSignature,
        jwt_errors.DecodeError: keys.JwtMalformed,
        jwt_errors.ExpiredSignatureError: keys.JwtExpired,
        jwt_errors.ImmatureSignatureError: keys.JwtNotYetValid,
        jwt_errors.InvalidAudienceError: keys.JwtWrongAudience,
        jwt_errors.InvalidIssuerError: keys.JwtWrongIssuer,
        jwt_errors.InvalidIssuedAtError: keys.JwtMalformed,
        jwt_errors.InvalidAlgorithmError: keys.JwtAlgorithmNotAllowed,
        jwt_errors.InvalidKeyError: keys.JwtAlgorithmNotAllowed,
        jwt_errors.InvalidSubjectError: keys.JwtMalformed,
        jwt_errors.InvalidJTIError: keys.JwtMalformed,
        jwt_errors.InvalidTokenError: keys.JwtMalformed,
        jwt_errors.PyJWKError: keys.JwtMalformed,
    }
    for pyjwt_type, ours in expected.items():
        assert type(map_pyjwt_error(pyjwt_type("x"))) is ours
    assert type(map_pyjwt_error(jwt_errors.MissingRequiredClaimError("exp"))) is JwtMissingClaim
    # Every error class has its own check id and a hint.
    classes: list[type[JwtInvalid]] = [JwtInvalid, *JwtInvalid.__subclasses__()]
    assert len({c.check for c in classes}) == len(classes) == 11
    assert all(c.hint for c in classes)


# --- fuzzing ---------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="abcAB0-_.=", max_size=200))
def test_fuzz_arbitrary_tokens(token: str) -> None:
    ring = _FUZZ_RING
    with pytest.raises(JwtInvalid):
        verify(token, ring)


_json = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                               st.text(max_size=10)),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c,
                                                                         max_size=3),
                     max_leaves=8)
_FUZZ_KEY = ed25519.Ed25519PrivateKey.generate()
_FUZZ_RING = KeyRing(_FUZZ_KEY)


@settings(max_examples=200, deadline=None)
@given(header=st.dictionaries(st.sampled_from(["alg", "kid", "typ", "crit", "b64", "jwk", "x"]),
                              _json | st.sampled_from(["EdDSA", _FUZZ_RING.active.kid]),
                              max_size=5),
       payload=_json, signed=st.booleans())
def test_fuzz_structured_tokens(header: dict[str, Any], payload: Any, signed: bool) -> None:
    token = forge(header, payload, _FUZZ_KEY.sign if signed else None)
    try:
        result = verify(token, _FUZZ_RING)
    except JwtInvalid:
        return
    # Acceptance is only possible for a genuinely valid token.
    assert signed and header.get("alg") == "EdDSA" and header.get("kid") == _FUZZ_RING.active.kid
    assert result == payload and result["iss"] == ISS


@settings(max_examples=200, deadline=None)
@given(position=st.integers(min_value=0), char=st.sampled_from("AQgw_-.x"))
def test_fuzz_single_character_mutations(position: int, char: str) -> None:
    token = keys.sign_jwt(claims(), _FUZZ_RING)
    i = position % len(token)
    mutated = token[:i] + char + token[i + 1:]
    try:
        result = verify(mutated, _FUZZ_RING)
    except JwtInvalid:
        return
    # base64url tolerates changes in unused trailing bits: then the bytes, hence claims, are equal.
    assert result == claims()
