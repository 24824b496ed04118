"""Fuzzing the token service's two JWT parsers: whatever arrives, only typed refusals come out.

- :func:`~mec_api.tokens.dpop.verify_dpop_proof` (the ``DPoP`` header, sent by anyone) may only
  raise :class:`DpopProofInvalid`;
- :func:`~mec_api.tokens.sa_token.verify_service_account_token` (``subject_token`` and
  ``client_assertion``) may only raise :class:`SubjectTokenInvalid` (and its subclasses) or
  :class:`SubjectIdentityIncomplete`.

Three kinds of input: arbitrary text and bytes; three dot-separated base64url segments of
arbitrary JSON; and *structurally valid* JWTs, correctly signed, whose header members and claims
were replaced by JSON values of any type or dropped. A success must then satisfy every rule
the parser promises (an oracle below), and a mutated signature must never verify.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm

from keys import KeyKind, KeyRing, generate_private_key, jwk_thumbprint, public_jwk
from mec_api.tokens.dpop import DPOP_ALGORITHMS, DpopProof, DpopProofInvalid, verify_dpop_proof
from mec_api.tokens.errors import SubjectIdentityIncomplete, SubjectTokenInvalid
from mec_api.tokens.sa_token import WorkloadIdentity, verify_service_account_token

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
URL = "https://umec.example/oauth2/token"
NOW = 1_800_000_000.0
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
SA_TYPED = (SubjectTokenInvalid, SubjectIdentityIncomplete)

# Keys made once (hypothesis runs each example many times; fixtures are per test).
DPOP_KEY = generate_private_key(KeyKind.EC_P256)
DPOP_JWK = public_jwk(DPOP_KEY)
CLUSTER_KEY = generate_private_key(KeyKind.EC_P256)
CLUSTER_RING = KeyRing(CLUSTER_KEY)
CLUSTER_JWKS = CLUSTER_RING.jwks(datetime.fromtimestamp(NOW, UTC))
ES256 = ECAlgorithm(ECAlgorithm.SHA256)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def compact(header: Any, claims: Any, key: Any) -> str:
    """A JWS over any JSON header and payload, signed ES256 whatever the header says."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(ES256.sign(signing_input.encode(), key))}"


def resign(token: str, signature: bytes) -> str:
    head, body, _ = token.split(".")
    return f"{head}.{body}.{b64(signature)}"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=8)
DROP = object()  # a member removed rather than replaced
# Strings close to valid values, so that a check skipped by mistake lets a wrong value through.
PLAUSIBLE = ["POST", "post", "GET", "", URL, URL.upper(), f"{URL}?q=1", f"{URL}/x", "dpop+jwt",
             "JWT", "ES256", "RS256", "HS256", "none", "umec", "tenant-a", "tenant-b", "app",
             "node-b", "system:serviceaccount:tenant-a:other", "system:serviceaccount:tenant-b:app",
             SA_ISSUER, f"{SA_ISSUER}/"]
TIMES = [NOW, NOW - 30, NOW + 30, NOW + 7200, NOW - 7200, 0, float("nan"), -1, "1800000000",
         10**400]  # an integer past any float: the fuzzer found an OverflowError with it
replacement = st.one_of(st.just(DROP), json_values, st.sampled_from(PLAUSIBLE),
                        st.sampled_from(TIMES))
segments = st.one_of(st.binary(max_size=60).map(b64),
                     json_values.map(lambda v: b64(json.dumps(v).encode())),
                     st.text(alphabet="AZaz09-_=+/.", max_size=40))
junk_tokens = st.one_of(st.text(max_size=300), st.text(alphabet="abcAB0-_.=", max_size=300),
                        st.tuples(segments, segments, segments).map(".".join))


Edit = tuple[bool, tuple[str, ...], Any]  # (in the header?, member path, new value or DROP)


def edits(header: list[tuple[str, ...]], claims: list[tuple[str, ...]]) -> Any:
    """One to three replacements of header members or claims."""
    return st.lists(st.one_of(st.tuples(st.just(True), st.sampled_from(header), replacement),
                              st.tuples(st.just(False), st.sampled_from(claims), replacement)),
                    min_size=1, max_size=3)


def mutate(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A deep copy of ``doc`` with the member at ``path`` replaced by ``value`` (or dropped)."""
    out = json.loads(json.dumps(doc))
    parent = out
    for part in path[:-1]:
        if not isinstance(parent.get(part), dict):
            parent[part] = {}
        parent = parent[part]
    if value is DROP:
        parent.pop(path[-1], None)
    else:
        parent[path[-1]] = value
    return out


def number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --- DPoP proofs -----------------------------------------------------------------------------

def dpop_parts(iat: float = NOW) -> tuple[dict[str, Any], dict[str, Any]]:
    return ({"typ": "dpop+jwt", "alg": "ES256", "jwk": dict(DPOP_JWK)},
            {"jti": uuid.uuid4().hex, "htm": "POST", "htu": URL, "iat": int(iat)})


def dpop(token: Any) -> DpopProof | None:
    """Verify; None for the typed refusal, anything else propagates and fails the test."""
    try:
        return verify_dpop_proof(token, method="POST", url=URL, now=NOW)
    except DpopProofInvalid as e:
        assert e.as_dict()["error"] == "invalid_dpop_proof" and e.check == "dpop.proof"
        return None


DPOP_HEADER_MEMBERS = [("typ",), ("alg",), ("jwk",), ("kid",), ("crit",),
                       ("jwk", "kty"), ("jwk", "crv"), ("jwk", "x"), ("jwk", "y"),
                       ("jwk", "d"), ("jwk", "n")]
DPOP_CLAIM_MEMBERS = [("jti",), ("htm",), ("htu",), ("iat",), ("ath",), ("exp",), ("nbf",)]


def test_a_valid_proof_verifies() -> None:
    """The harness itself: the unmutated proof passes, so refusals below mean something."""
    header, claims = dpop_parts()
    proof = dpop(compact(header, claims, DPOP_KEY))
    assert proof is not None and proof.jkt == jwk_thumbprint(DPOP_JWK)


@FUZZ
@given(junk_tokens)
def test_dpop_arbitrary_text_is_a_typed_refusal(token: str) -> None:
    assert dpop(token) is None


@FUZZ
@given(st.binary(max_size=300))
def test_dpop_arbitrary_bytes_are_a_typed_refusal(raw: bytes) -> None:
    assert dpop(raw) is None
    assert dpop(raw.decode("latin-1")) is None


@FUZZ
@given(edits(DPOP_HEADER_MEMBERS, DPOP_CLAIM_MEMBERS))
def test_dpop_mutated_but_signed_proofs(changes: list[Edit]) -> None:
    """Header members and claims of any type, correctly signed: refused (typed), or accepted
    only when everything the RFC 9449 checks promise still holds."""
    header, claims = dpop_parts()
    for in_header, path, value in changes:
        if in_header:
            header = mutate(header, path, value)
        else:
            claims = mutate(claims, path, value)
    dpop_oracle(header, claims)


def dpop_oracle(header: dict[str, Any], claims: dict[str, Any]) -> None:
    """Signed as given: a typed refusal, or a success for which every RFC 9449 rule holds."""
    proof = dpop(compact(header, claims, DPOP_KEY))
    if proof is None:
        return
    assert str(header.get("typ")).lower() == "dpop+jwt" and header.get("alg") in DPOP_ALGORITHMS
    assert proof.jkt == jwk_thumbprint(DPOP_JWK)
    assert claims.get("htm") == "POST" and claims.get("htu") in (URL, f"{URL}?q=1")
    assert isinstance(claims.get("jti"), str) and claims["jti"] and proof.jti == claims["jti"]
    assert number(claims.get("iat")) and NOW - 60 <= claims["iat"] <= NOW + 5


@pytest.mark.parametrize("in_header", [True, False], ids=["header", "claims"])
def test_dpop_every_plausible_substitution(in_header: bool) -> None:
    """Deterministic companion of the fuzz test (CI derandomizes, and a near-valid string is a
    rare draw): each member, in turn, replaced by each plausible value or dropped."""
    for path in DPOP_HEADER_MEMBERS if in_header else DPOP_CLAIM_MEMBERS:
        for value in [DROP, *PLAUSIBLE, *TIMES]:
            header, claims = dpop_parts()
            if in_header:
                header = mutate(header, path, value)
            else:
                claims = mutate(claims, path, value)
            dpop_oracle(header, claims)


@FUZZ
@given(st.integers(min_value=0, max_value=63), st.integers(min_value=0, max_value=7),
       st.sampled_from(["flip", "truncate", "extend", "replace"]), st.binary(max_size=80))
def test_dpop_mutated_signature_never_verifies(index: int, bit: int, how: str,
                                               other: bytes) -> None:
    header, claims = dpop_parts()
    token = compact(header, claims, DPOP_KEY)
    signature = base64.urlsafe_b64decode(token.split(".")[2] + "==")
    bad = {"flip": signature[:index] + bytes([signature[index] ^ (1 << bit)])
           + signature[index + 1:],
           "truncate": signature[:index], "extend": signature + other[:1] + b"\0",
           "replace": other}[how]
    assume(bad != signature)
    assert dpop(resign(token, bad)) is None


@pytest.mark.parametrize("iat", [float("nan"), float("inf"), float("-inf"), NOW + 3600,
                                 NOW - 3600, 10**400, "1800000000", True, None, [NOW]])
def test_dpop_iat_must_be_a_finite_recent_number(iat: Any) -> None:
    """Examples the fuzzer found or must keep finding: NaN compares false both ways and would
    pass a window check written as two comparisons."""
    header, claims = dpop_parts()
    with pytest.raises(DpopProofInvalid, match="iat"):
        verify_dpop_proof(compact(header, {**claims, "iat": iat}, DPOP_KEY), method="POST",
                          url=URL, now=NOW)


def test_dpop_iat_in_the_future_beyond_the_leeway() -> None:
    header, claims = dpop_parts()
    ok = compact(header, {**claims, "iat": int(NOW) + 5}, DPOP_KEY)
    assert verify_dpop_proof(ok, method="POST", url=URL, now=NOW).iat == NOW + 5
    late = compact(header, {**claims, "iat": int(NOW) + 6}, DPOP_KEY)
    with pytest.raises(DpopProofInvalid, match=r"iat 1800000006 is outside \[1799999940, "
                                               r"1800000005\]"):
        verify_dpop_proof(late, method="POST", url=URL, now=NOW)


# --- service-account tokens ------------------------------------------------------------------

def sa_parts() -> tuple[dict[str, Any], dict[str, Any]]:
    t = int(NOW)
    return ({"alg": "ES256", "typ": "JWT", "kid": CLUSTER_RING.active.kid},
            {"aud": ["umec"], "exp": t + 3600, "iat": t, "nbf": t, "iss": SA_ISSUER,
             "jti": str(uuid.uuid4()), "sub": "system:serviceaccount:tenant-a:app",
             "kubernetes.io": {"namespace": "tenant-a",
                               "node": {"name": "node-a", "uid": "uid-node-a"},
                               "pod": {"name": "app-1", "uid": "uid-app-1"},
                               "serviceaccount": {"name": "app", "uid": "uid-sa"}}})


def sa(token: Any) -> WorkloadIdentity | None:
    try:
        return verify_service_account_token(token, CLUSTER_JWKS, issuer=SA_ISSUER,
                                            audiences=["umec"], now=NOW, leeway=5.0)
    except SA_TYPED as e:
        assert e.status in (400, 401) and e.as_dict()["error"] in ("invalid_grant",
                                                                   "invalid_client")
        return None


SA_HEADER_MEMBERS = [("alg",), ("kid",), ("typ",), ("crit",), ("jwk",), ("b64",)]
SA_CLAIM_MEMBERS = [
    ("aud",), ("exp",), ("iat",), ("nbf",), ("iss",), ("jti",), ("sub",), ("kubernetes.io",),
    ("kubernetes.io", "namespace"), ("kubernetes.io", "node"), ("kubernetes.io", "node", "name"),
    ("kubernetes.io", "pod"), ("kubernetes.io", "pod", "name"), ("kubernetes.io", "pod", "uid"),
    ("kubernetes.io", "serviceaccount"), ("kubernetes.io", "serviceaccount", "name")]


def test_a_valid_sa_token_verifies() -> None:
    header, claims = sa_parts()
    who = sa(compact(header, claims, CLUSTER_KEY))
    assert who is not None and who.client_id == "tenant-a:app" and who.node_name == "node-a"


@FUZZ
@given(junk_tokens)
def test_sa_arbitrary_text_is_a_typed_refusal(token: str) -> None:
    assert sa(token) is None


@FUZZ
@given(st.binary(max_size=300))
def test_sa_arbitrary_bytes_are_a_typed_refusal(raw: bytes) -> None:
    assert sa(raw) is None
    assert sa(raw.decode("latin-1")) is None


@FUZZ
@given(edits(SA_HEADER_MEMBERS, SA_CLAIM_MEMBERS))
def test_sa_mutated_but_signed_tokens(changes: list[Edit]) -> None:
    """Claims of any type, correctly signed: refused (typed), or the identity is exactly what
    well-formed, current claims say."""
    header, claims = sa_parts()
    for in_header, path, value in changes:
        if in_header:
            header = mutate(header, path, value)
        else:
            claims = mutate(claims, path, value)
    sa_oracle(header, claims)


def sa_oracle(header: dict[str, Any], claims: dict[str, Any]) -> None:
    """Signed as given: a typed refusal, or exactly the identity well-formed, current claims
    name."""
    who = sa(compact(header, claims, CLUSTER_KEY))
    if who is None:
        return
    k8s = claims["kubernetes.io"]
    assert header["alg"] == "ES256" and header["kid"] == CLUSTER_RING.active.kid
    assert claims["iss"] == SA_ISSUER and number(claims["exp"]) and claims["exp"] > NOW - 5
    assert claims["aud"] == "umec" or "umec" in claims["aud"]
    assert all(number(claims[c]) and claims[c] <= NOW + 5 for c in ("iat", "nbf") if c in claims)
    assert "iat" in claims
    assert (who.namespace, who.service_account, who.pod_name, who.pod_uid, who.node_name) == (
        k8s["namespace"], k8s["serviceaccount"]["name"], k8s["pod"]["name"], k8s["pod"]["uid"],
        k8s["node"]["name"])
    assert claims["sub"] == who.subject == f"system:serviceaccount:{who.namespace}:" \
                                           f"{who.service_account}"
    assert all(isinstance(v, str) and v for v in (who.namespace, who.service_account,
                                                  who.pod_name, who.pod_uid, who.node_name))


@pytest.mark.parametrize("in_header", [True, False], ids=["header", "claims"])
def test_sa_every_plausible_substitution(in_header: bool) -> None:
    """Deterministic companion of the fuzz test: each member in turn replaced or dropped."""
    for path in SA_HEADER_MEMBERS if in_header else SA_CLAIM_MEMBERS:
        for value in [DROP, *PLAUSIBLE, *TIMES]:
            header, claims = sa_parts()
            if in_header:
                header = mutate(header, path, value)
            else:
                claims = mutate(claims, path, value)
            sa_oracle(header, claims)


@FUZZ
@given(st.integers(min_value=0, max_value=63), st.integers(min_value=0, max_value=7),
       st.sampled_from(["flip", "truncate", "extend", "replace"]), st.binary(max_size=80))
def test_sa_mutated_signature_never_verifies(index: int, bit: int, how: str,
                                             other: bytes) -> None:
    header, claims = sa_parts()
    token = compact(header, claims, CLUSTER_KEY)
    signature = base64.urlsafe_b64decode(token.split(".")[2] + "==")
    bad = {"flip": signature[:index] + bytes([signature[index] ^ (1 << bit)])
           + signature[index + 1:],
           "truncate": signature[:index], "extend": signature + other[:1] + b"\0",
           "replace": other}[how]
    assume(bad != signature)
    assert sa(resign(token, bad)) is None

