"""keys.tokens and keys.embedded: JWT signing and strict verification, including the classic JWT
attacks, and the verification of JWTs that carry their own key (the generic part of DPoP)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping
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
from jwt.algorithms import get_default_algorithms

import keys
from keys import (
    JwkInvalid,
    JwtAlgorithmNotAllowed,
    JwtBadSignature,
    JwtEmbeddedKeyInvalid,
    JwtEmbeddedKeyPrivate,
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


def verify(token: Any, jwks: Any, **kw: Any) -> Mapping[str, Any]:
    args: dict[str, Any] = {"algorithms": ["ES256", "RS256", "PS256", "EdDSA"], "issuer": ISS,
                            "audience": AUD, "now": NOW}
    args.update(kw)
    return keys.verify_jwt(token, jwks, **args).claims


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


def test_verified_jwt_is_the_header_and_claims_of_one_parse(
        all_keys: dict[KeyKind, PrivateKey]) -> None:
    ring = KeyRing(all_keys[KeyKind.EC_P256])
    token = keys.sign_jwt(claims(), ring, headers={"typ": "at+jwt", "x-trace": "t1"})
    verified = keys.verify_jwt(token, ring, algorithms=["ES256"], issuer=ISS, audience=AUD,
                               now=NOW, typ="at+jwt")
    assert isinstance(verified, keys.VerifiedJwt)
    assert verified.header == {"alg": "ES256", "kid": ring.active.kid, "typ": "at+jwt",
                               "x-trace": "t1"} == pyjwt.get_unverified_header(token)
    assert verified.claims == claims() and verified.kid == ring.active.kid
    # Read-only: a cached verification cannot be altered by one of its readers.
    with pytest.raises(TypeError):
        verified.claims["scope"] = "mec011.admin"  # type: ignore[index]
    with pytest.raises(TypeError):
        verified.header["kid"] = "other"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        verified.claims = {}  # type: ignore[misc]
    # After a rotation, .kid names the key that verified, old or new.
    old = keys.sign_jwt(claims(), ring)
    ring.rotate(all_keys[KeyKind.ED25519], T_NOW, timedelta(minutes=10))
    new = keys.sign_jwt(claims(), ring)
    kids = [keys.verify_jwt(t, ring, algorithms=["ES256", "EdDSA"], issuer=ISS, audience=AUD,
                            now=NOW).kid for t in (old, new)]
    assert kids == [ring.retiring[0].kid, ring.active.kid] and kids[0] != kids[1]


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
    classes: list[type[JwtInvalid]] = [JwtInvalid]
    for c in classes:
        classes.extend(c.__subclasses__())
    assert len({c.check for c in classes}) == len(classes) == 13
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


# --- JWTs carrying their own key (keys.embedded; DPoP's generic part) --------------------------

TYP = "dpop+jwt"
EMBEDDED_ALGS = ["ES256", "RS256", "PS256", "EdDSA"]
KIND_OF = {"ES256": KeyKind.EC_P256, "RS256": KeyKind.RSA_2048, "PS256": KeyKind.RSA_2048,
           "EdDSA": KeyKind.ED25519}


def signer(alg: str, key: Any) -> Callable[[bytes], bytes]:
    algorithm = get_default_algorithms()[alg]
    return lambda message: algorithm.sign(message, key)


def embedded_token(key: Any, alg: str, payload: Any = None, **header: Any) -> str:
    """A JWS signed by ``key`` with ``alg``, its public JWK in the header (unless overridden)."""
    full = {"typ": TYP, "alg": alg, "jwk": keys.public_jwk(key), **header}
    full = {k: v for k, v in full.items() if v is not None}
    return forge(full, {"jti": "j1", "n": 1} if payload is None else payload, signer(alg, key))


def verify_embedded(token: Any, **kw: Any) -> keys.EmbeddedKeyJwt:
    args: dict[str, Any] = {"algorithms": EMBEDDED_ALGS, "typ": TYP}
    args.update(kw)
    return keys.verify_embedded_key_jwt(token, **args)


@pytest.mark.parametrize("alg", EMBEDDED_ALGS)
def test_embedded_key_jwt_of_every_kind(all_keys: dict[KeyKind, PrivateKey], alg: str) -> None:
    key = all_keys[KIND_OF[alg]]
    token = embedded_token(key, alg, {"htm": "POST", "jti": "a"})
    verified = verify_embedded(token)
    assert verified.claims == {"htm": "POST", "jti": "a"}
    assert verified.header == {"typ": TYP, "alg": alg, "jwk": keys.public_jwk(key)}
    assert verified.thumbprint == keys.key_thumbprint(key)
    # typ is compared case-insensitively; optional JWK members do not change the thumbprint.
    token = embedded_token(key, alg, typ="DPoP+JWT", jwk={**keys.public_jwk(key), "kid": "k"})
    assert verify_embedded(token).thumbprint == keys.key_thumbprint(key)


def test_embedded_typ_must_be_the_expected_one(all_keys: dict[KeyKind, PrivateKey]) -> None:
    key = all_keys[KeyKind.EC_P256]
    for typ in (None, "JWT", "at+jwt", "application/dpop+jwt", "dpop+jwt ", ["dpop+jwt"], 1):
        err = raises(JwtWrongType, partial(verify_embedded, embedded_token(key, "ES256",
                                                                           typ=typ)))
        assert err.check == "jwt.typ"
    with pytest.raises(ValueError, match="typ"):
        verify_embedded(embedded_token(key, "ES256"), typ="")


def test_embedded_alg_must_be_pinned_and_fit_the_key(all_keys: dict[KeyKind, PrivateKey]) -> None:
    ec_key, rsa_key = all_keys[KeyKind.EC_P256], all_keys[KeyKind.RSA_2048]
    jwk = keys.public_jwk(ec_key)
    unsigned = [forge({"typ": TYP, "alg": alg, "jwk": jwk}, {"jti": "x"})
                for alg in ("none", "None", "NONE")]
    secrets = (keys.public_key_pem(ec_key), json.dumps(jwk).encode(), b"")
    hmac_signed = [forge({"typ": TYP, "alg": alg, "jwk": jwk}, {"jti": "x"},
                         partial(_hmac, secret, digest))
                   for alg, digest in (("HS256", hashlib.sha256), ("HS512", hashlib.sha512))
                   for secret in secrets]
    for token in (*unsigned, *hmac_signed):
        raises(JwtAlgorithmNotAllowed, partial(verify_embedded, token))
    # Supported but not pinned by this caller: refused, although it would verify.
    rs = embedded_token(rsa_key, "RS256")
    raises(JwtAlgorithmNotAllowed, partial(verify_embedded, rs, algorithms=["ES256", "EdDSA"]))
    assert verify_embedded(rs, algorithms=["RS256"]).thumbprint == keys.key_thumbprint(rsa_key)
    # The alg must fit the embedded key's type: ES256 header, RSA key (signature irrelevant).
    mismatch = forge({"typ": TYP, "alg": "ES256", "jwk": keys.public_jwk(rsa_key)},
                     {"jti": "x"}, signer("RS256", rsa_key))
    raises(JwtAlgorithmNotAllowed, partial(verify_embedded, mismatch))
    for algorithms in ("ES256", [], ["none"], ["HS256"]):
        with pytest.raises(ValueError):
            verify_embedded(rs, algorithms=algorithms)


def test_embedded_jwk_must_be_a_public_key(all_keys: dict[KeyKind, PrivateKey]) -> None:
    key = all_keys[KeyKind.EC_P256]
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    d = b64(key.private_numbers().private_value.to_bytes(32, "big"))
    public = keys.public_jwk(key)
    for leaky in ({**public, "d": d}, {**public, "d": ""}, {**public, "k": "c2VjcmV0"},
                  {"kty": "oct", "k": "c2VjcmV0"}, {**public, "p": "AQ", "q": "AQ"}):
        err = raises(JwtEmbeddedKeyPrivate, partial(verify_embedded,
                                                    embedded_token(key, "ES256", jwk=leaky)))
        assert err.check == "jwt.jwk.private" and isinstance(err, JwtEmbeddedKeyInvalid)
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    for bad in ("jwk", [public], {"kty": "oct"}, {**public, "crv": "P-384"},
                {**public, "x": public["y"]}, {k: v for k, v in public.items() if k != "y"},
                keys.public_jwk(ed25519.Ed25519PrivateKey.generate()) | {"kty": "EC"}):
        raises(JwtEmbeddedKeyInvalid, partial(verify_embedded,
                                              embedded_token(key, "ES256", jwk=bad)))
    raises(JwtEmbeddedKeyInvalid, partial(verify_embedded, forge(
        {"typ": TYP, "alg": "ES256"}, {"jti": "x"}, signer("ES256", key))))
    small_jwk = {"kty": "RSA", "n": b64(small.public_key().public_numbers().n.to_bytes(128, "big")),
                 "e": "AQAB"}
    raises(JwtEmbeddedKeyInvalid, partial(verify_embedded, forge(
        {"typ": TYP, "alg": "RS256", "jwk": small_jwk}, {"jti": "x"}, signer("RS256", small))))


def test_embedded_signature_must_be_by_the_embedded_key(
        all_keys: dict[KeyKind, PrivateKey]) -> None:
    for alg in EMBEDDED_ALGS:
        key = all_keys[KIND_OF[alg]]
        other = keys.generate_private_key(KIND_OF[alg])
        # Signed by another key than the one it names: possession of the named key unproven.
        impostor = forge({"typ": TYP, "alg": alg, "jwk": keys.public_jwk(key)}, {"jti": "x"},
                         signer(alg, other))
        raises(JwtBadSignature, partial(verify_embedded, impostor))
        token = embedded_token(key, alg, {"jti": "x", "htm": "GET"})
        head, _, sig = token.split(".")
        raises(JwtBadSignature, partial(verify_embedded,
                                        f"{head}.{segment({'jti': 'x', 'htm': 'POST'})}.{sig}"))
        raises(JwtBadSignature, partial(verify_embedded, f"{head}.{token.split('.')[1]}."))


def test_embedded_malformed_tokens(all_keys: dict[KeyKind, PrivateKey]) -> None:
    key = all_keys[KeyKind.ED25519]
    good = embedded_token(key, "EdDSA")
    head, body, sig = good.split(".")
    for token in ("", "a.b", f"{good}.x", f"{head}.{body}", f"!!.{body}.{sig}", 12345,
                  embedded_token(key, "EdDSA", [1]), embedded_token(key, "EdDSA", "text"),
                  embedded_token(key, "EdDSA", crit=["exp"]),
                  embedded_token(key, "EdDSA", b64=True)):
        raises(JwtMalformed, partial(verify_embedded, token))
    raises(JwtMalformed, partial(verify_embedded, good, max_bytes=len(good) - 1))
    assert verify_embedded(good, max_bytes=len(good)).claims == {"jti": "j1", "n": 1}


_EMBEDDED_KEY = ed25519.Ed25519PrivateKey.generate()
_EMBEDDED_JWK = keys.public_jwk(_EMBEDDED_KEY)
_HEADER_PATHS = [("typ",), ("alg",), ("jwk",), ("kid",), ("crit",), ("b64",), ("x5u",),
                 ("jwk", "kty"), ("jwk", "crv"), ("jwk", "x"), ("jwk", "d"), ("jwk", "k")]
_PLAUSIBLE = ["dpop+jwt", "DPOP+JWT", "application/dpop+jwt", "JWT", "EdDSA", "ES256", "RS256",
              "HS256", "none", "OKP", "EC", "RSA", "oct", "Ed25519", "P-256", _EMBEDDED_JWK["x"],
              keys.public_jwk(ed25519.Ed25519PrivateKey.generate())["x"], dict(_EMBEDDED_JWK)]
_DROP = object()


def _set(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(doc))
    parent = out
    for part in path[:-1]:
        if not isinstance(parent.get(part), dict):
            parent[part] = {}
        parent = parent[part]
    if value is _DROP:
        parent.pop(path[-1], None)
    else:
        parent[path[-1]] = value
    return out


_json_object = st.dictionaries(st.text(max_size=5).filter(lambda k: k not in ("sub", "jti")),
                               st.recursive(st.none() | st.booleans() | st.integers()
                                            | st.floats(allow_nan=False) | st.text(max_size=10),
                                            lambda c: st.lists(c, max_size=3)
                                            | st.dictionaries(st.text(max_size=5), c,
                                                              max_size=3),
                                            max_leaves=6),
                               max_size=4)


@settings(max_examples=200, deadline=None)
@given(payload=_json_object,
       extra=st.dictionaries(st.sampled_from(["x-a", "cty", "nonce", "zip_"]),
                             st.text(max_size=8), max_size=2))
def test_fuzz_valid_embedded_tokens_verify(payload: dict[str, Any], extra: dict[str, Any]
                                           ) -> None:
    """Any JSON object, any unrelated header member: a correctly made token verifies."""
    token = forge({"typ": TYP, "alg": "EdDSA", "jwk": _EMBEDDED_JWK, **extra}, payload,
                  _EMBEDDED_KEY.sign)
    verified = verify_embedded(token)
    assert verified.claims == payload and verified.header["jwk"] == _EMBEDDED_JWK
    assert verified.thumbprint == keys.key_thumbprint(_EMBEDDED_KEY)


@settings(max_examples=300, deadline=None)
@given(edits=st.lists(st.tuples(st.sampled_from(_HEADER_PATHS),
                                st.one_of(st.just(_DROP), _json, st.sampled_from(_PLAUSIBLE))),
                      min_size=1, max_size=3),
       payload=_json | _json_object)
def test_fuzz_mutated_embedded_tokens(edits: list[tuple[tuple[str, ...], Any]],
                                      payload: Any) -> None:
    """Header members of any type, any payload, correctly signed by the real key: refused
    (typed), or accepted only if typ, alg and the public key are still the genuine ones."""
    header: dict[str, Any] = {"typ": TYP, "alg": "EdDSA", "jwk": dict(_EMBEDDED_JWK)}
    for path, value in edits:
        header = _set(header, path, value)
    try:
        verified = verify_embedded(forge(header, payload, _EMBEDDED_KEY.sign))
    except JwtInvalid as e:
        assert e.hint and e.check.startswith("jwt")
        return
    assert str(header.get("typ")).lower() == TYP and header["alg"] == "EdDSA"
    jwk = header["jwk"]
    assert not {"d", "k"} & set(jwk) and {k: jwk[k] for k in ("kty", "crv", "x")} == _EMBEDDED_JWK
    assert verified.thumbprint == keys.key_thumbprint(_EMBEDDED_KEY)
    assert verified.claims == payload and "crit" not in header and "b64" not in header


@settings(max_examples=300, deadline=None)
@given(position=st.integers(min_value=0), char=st.sampled_from("AQgw_-.x"))
def test_fuzz_embedded_single_character_mutations(position: int, char: str) -> None:
    token = forge({"typ": TYP, "alg": "EdDSA", "jwk": _EMBEDDED_JWK}, claims(),
                  _EMBEDDED_KEY.sign)
    i = position % len(token)
    try:
        verified = verify_embedded(token[:i] + char + token[i + 1:])
    except JwtInvalid:
        return
    # Only changes in unused trailing base64url bits survive: the bytes, hence all, are equal.
    assert verified.claims == claims() and verified.thumbprint == keys.key_thumbprint(
        _EMBEDDED_KEY)
