"""The k3s join credential's pure parts (attest.core.join_token) and the node's token file
(attest.join_agent): the K10 parser and the seal fuzzed with hypothesis, the Secret's shape, the
seal opened through a software TPM's ActivateCredential and by nothing else."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
import string
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from attest import join_agent
from attest.core.credential import make_credential
from attest.core.join_token import (
    K3S_NODE_GROUP,
    JoinSealBroken,
    JoinTokenMalformed,
    bootstrap_secret,
    ca_hash,
    k3s_secure_token,
    new_bootstrap_token,
    object_created_at,
    open_token,
    parse_k3s_token,
    rfc3339,
    seal_token,
    verdict_token_id,
)
from tests.support.simtpm import CredentialActivationFailed, SimulatedTpm

NOW = datetime(2026, 12, 7, 7, 0, tzinfo=UTC)
CA = hashlib.sha256(b"ca").hexdigest()


def test_secure_token_round_trips_and_secret_has_kubeadm_shape() -> None:
    token = new_bootstrap_token(verdict_token_id("pi-1", b"n" * 32), NOW, 600)
    text = k3s_secure_token(CA, token)
    assert parse_k3s_token(text) == (CA, token.token_id, token.token_secret)
    secret = bootstrap_secret(token, "pi-1", {"a": "b"}, {})
    assert secret["type"] == "bootstrap.kubernetes.io/token"
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}  # type: ignore[attr-defined]
    assert data["expiration"] == "2026-12-07T07:10:00Z"
    assert data["auth-extra-groups"] == K3S_NODE_GROUP
    assert secret["metadata"] == {"name": f"bootstrap-token-{token.token_id}",
                                  "namespace": "kube-system", "labels": {"a": "b"},
                                  "annotations": {}}


def test_token_id_is_per_verdict() -> None:
    ids = {verdict_token_id("pi-1", bytes([i]) * 32) for i in range(50)}
    assert len(ids) == 50 and all(len(i) == 6 for i in ids)
    assert verdict_token_id("pi-1", b"x") != verdict_token_id("pi-2", b"x")
    assert ca_hash(b"pem") == hashlib.sha256(b"pem").hexdigest()


@settings(max_examples=300)
@given(st.text(max_size=300))
def test_k3s_token_parser_never_crashes(text: str) -> None:
    try:
        ca, token_id, secret = parse_k3s_token(text)
    except JoinTokenMalformed:
        return
    assert text == f"K10{ca}::{token_id}.{secret}"


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=40),
                     lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=20), inner, max_size=4), max_leaves=12)
_STAMPS = (st.from_regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
                         r"(Z|[+-][0-9]{2}:[0-9]{2})", fullmatch=True)  # shaped, maybe no date
           | st.text(alphabet="0123456789-:TZ.+", max_size=32) | st.text(max_size=32))


@settings(max_examples=400)
@given(st.binary(max_size=300) | st.builds(
    lambda meta: json.dumps(meta).encode(),
    st.fixed_dictionaries({"metadata": st.fixed_dictionaries(
        {"creationTimestamp": _STAMPS | _JSON})}) | _JSON))
def test_creation_timestamp_parser_never_crashes(raw: bytes) -> None:
    """Anything the apiserver (or a proxy in front of it) answers gives a timezone-aware time or
    None, never an exception."""
    created = object_created_at(raw)
    assert created is None or created.utcoffset() is not None


@given(st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9999, 12, 31),
                    timezones=st.just(UTC)),
       st.sampled_from(["", ".5", ".123456789"]))
def test_creation_timestamp_round_trips_in_whole_seconds(at: datetime, fraction: str) -> None:
    stamp = rfc3339(at)
    raw = json.dumps({"kind": "Node", "metadata": {
        "creationTimestamp": stamp[:-1] + fraction + "Z"}}).encode()
    assert object_created_at(raw) == at.replace(microsecond=0)
    assert object_created_at(json.dumps({"metadata": {"creationTimestamp": stamp[:-1]}})
                             .encode()) is None  # no zone: refused, never taken as local time
    assert object_created_at(b'{"metadata": {"creationTimestamp": "2026-12-07T14:00:00+02:00"}}'
                             ) == datetime(2026, 12, 7, 12, tzinfo=UTC)


@given(st.text(alphabet=string.ascii_lowercase + string.digits, min_size=6, max_size=6),
       st.text(alphabet=string.ascii_lowercase + string.digits, min_size=16, max_size=16))
def test_every_well_formed_token_parses(token_id: str, secret: str) -> None:
    assert parse_k3s_token(f"K10{CA}::{token_id}.{secret}") == (CA, token_id, secret)
    with pytest.raises(JoinTokenMalformed):
        parse_k3s_token(f"K10{CA}::{token_id}.{secret}x")


@settings(max_examples=200)
@given(st.binary(max_size=200), st.binary(min_size=32, max_size=32))
def test_open_refuses_anything_but_the_seal(sealed: bytes, secret: bytes) -> None:
    with pytest.raises(JoinSealBroken):
        open_token(secret, "pi-1", sealed)


def test_seal_opens_only_with_its_secret_and_node() -> None:
    sealed = seal_token(b"s" * 32, "pi-1", "K10x")
    assert open_token(b"s" * 32, "pi-1", sealed) == "K10x"
    for secret, node in ((b"t" * 32, "pi-1"), (b"s" * 32, "pi-2")):
        with pytest.raises(JoinSealBroken):
            open_token(secret, node, sealed)
    flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(JoinSealBroken):
        open_token(b"s" * 32, "pi-1", flipped)


def _grant(tpm: SimulatedTpm, token: str, ak_name: bytes | None = None) -> dict[str, str]:
    secret = b"k" * 32
    blob, enc = make_credential(tpm.ek_public, ak_name or tpm.ak_public.name(), secret)
    return {"credential_blob": base64.b64encode(blob).decode(),
            "encrypted_secret": base64.b64encode(enc).decode(),
            "sealed_token": base64.b64encode(seal_token(secret, "pi-1", token)).decode()}


def test_grant_opens_in_its_tpm_only() -> None:
    token = f"K10{CA}::abcdef.0123456789abcdef"
    tpm = SimulatedTpm()
    assert join_agent.open_grant(tpm, "pi-1", _grant(tpm, token)) == token
    with pytest.raises(CredentialActivationFailed):  # another TPM: another EK
        join_agent.open_grant(SimulatedTpm(), "pi-1", _grant(tpm, token))
    other_ak = SimulatedTpm().ak_public.name()  # same EK, bound to another AK's Name
    with pytest.raises(CredentialActivationFailed, match="AK name"):
        join_agent.open_grant(tpm, "pi-1", _grant(tpm, token, other_ak))
    with pytest.raises(JoinTokenMalformed):  # only a k3s token is ever written
        join_agent.open_grant(tpm, "pi-1", _grant(tpm, "junk\n[Service]"))


def test_token_files(tmp_path: Path) -> None:
    token = f"K10{CA}::abcdef.0123456789abcdef"
    dropin = tmp_path / "k3s-agent.service.d" / "umec-token.conf"
    join_agent.write_token(dropin, token)
    assert f'Environment="K3S_TOKEN={token}"' in dropin.read_text()
    assert stat.S_IMODE(dropin.stat().st_mode) == 0o600
    config = tmp_path / "config.yaml"
    config.write_text("server: https://k3s:6443\nnode-label: [a=b]\n")
    join_agent.write_token(config, token)
    assert yaml.safe_load(config.read_text()) == {"server": "https://k3s:6443",
                                                  "node-label": ["a=b"], "token": token}
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    config.write_text("- a list\n")
    with pytest.raises(join_agent.JoinTokenPathInvalid):
        join_agent.write_token(config, token)
    with pytest.raises(join_agent.JoinTokenPathInvalid):
        join_agent.write_token(tmp_path / "token.txt", token)
