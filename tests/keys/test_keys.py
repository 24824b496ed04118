"""keys: generation, key files, JWK/thumbprints and the persisted KeyRing."""

from __future__ import annotations

import base64
import json
import os
import stat
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa, x25519
from hypothesis import given, settings
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

import keys
from keys import (
    JwkInvalid,
    KeyFileError,
    KeyFileInaccessible,
    KeyFileInsecure,
    KeyFileMalformed,
    KeyFileMissing,
    KeyFileNotEncrypted,
    KeyKind,
    KeyPassphraseRequired,
    KeyPassphraseWrong,
    KeyRing,
    KeyRingError,
    PrivateKey,
    UnsupportedKeyType,
    generate_private_key,
)

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)

# RFC 7638 §3.1 (the RFC 7517 A.1 RSA key) and RFC 8037 A.1-A.3 (Ed25519).
RFC7638_N = (
    "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_"
    "BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_"
    "FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI"
    "4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw")
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
RFC8037_D = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
RFC8037_X = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
RFC8037_THUMBPRINT = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def _b64d(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


@pytest.fixture(scope="module")
def all_keys() -> dict[KeyKind, PrivateKey]:
    # RSA generation is slow on a Pi-class CPU: one key per kind for the whole module.
    return {kind: keys.generate_private_key(kind) for kind in KeyKind}


def _same_key(a: PrivateKey, b: PrivateKey) -> bool:
    der = serialization.Encoding.DER, serialization.PrivateFormat.PKCS8
    return (a.private_bytes(*der, serialization.NoEncryption())
            == b.private_bytes(*der, serialization.NoEncryption()))


# --- generation and kinds --------------------------------------------------------------------


def test_generation_gives_the_requested_kind(all_keys: dict[KeyKind, PrivateKey]) -> None:
    k = all_keys
    ec_key, rsa2k, rsa3k = k[KeyKind.EC_P256], k[KeyKind.RSA_2048], k[KeyKind.RSA_3072]
    assert isinstance(ec_key, ec.EllipticCurvePrivateKey)
    assert isinstance(ec_key.curve, ec.SECP256R1)
    assert isinstance(rsa2k, rsa.RSAPrivateKey) and rsa2k.key_size == 2048
    assert isinstance(rsa3k, rsa.RSAPrivateKey) and rsa3k.key_size == 3072
    assert isinstance(k[KeyKind.ED25519], ed25519.Ed25519PrivateKey)
    for kind, key in k.items():
        assert keys.key_kind(key) is kind
        assert keys.key_kind(key.public_key()) is kind
    assert isinstance(keys.generate_private_key(), ec.EllipticCurvePrivateKey)  # default


def test_algorithms_per_kind(all_keys: dict[KeyKind, PrivateKey]) -> None:
    expected = {KeyKind.EC_P256: ("ES256", {"ES256"}),
                KeyKind.RSA_2048: ("RS256", {"RS256", "PS256"}),
                KeyKind.RSA_3072: ("RS256", {"RS256", "PS256"}),
                KeyKind.ED25519: ("EdDSA", {"EdDSA"})}
    for kind, (default, allowed) in expected.items():
        assert keys.default_algorithm(all_keys[kind]) == default
        assert keys.allowed_algorithms(all_keys[kind]) == allowed


@pytest.mark.parametrize("make", [
    lambda: ec.generate_private_key(ec.SECP384R1()),
    lambda: rsa.generate_private_key(65537, 1024),
    lambda: x25519.X25519PrivateKey.generate(),
    lambda: dsa.generate_private_key(2048),
], ids=["p384", "rsa1024", "x25519", "dsa"])
def test_unsupported_key_types_are_refused(make: Callable[[], Any]) -> None:
    with pytest.raises(UnsupportedKeyType):
        keys.key_kind(make())
    with pytest.raises(UnsupportedKeyType):
        keys.public_jwk(make())


# --- key files -------------------------------------------------------------------------------


@pytest.mark.parametrize("passphrase", [None, "correct horse", b"\x00binary\xff"])
def test_private_key_roundtrip_every_kind(tmp_path: Path, all_keys: dict[KeyKind, PrivateKey],
                                          passphrase: str | bytes | None) -> None:
    for kind, key in all_keys.items():
        path = tmp_path / f"{kind.value}.pem"
        keys.save_private_key(path, key, passphrase)
        data = path.read_bytes()
        if passphrase is None:
            assert data.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
        else:
            assert data.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert _same_key(keys.load_private_key(path, passphrase), key)


def test_private_key_is_0600_from_creation_even_with_umask_0(
        tmp_path: Path, all_keys: dict[KeyKind, PrivateKey],
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    real_replace = os.replace

    def spy(src: Any, dst: Any) -> None:
        # The temporary file, complete but not yet renamed, must already be private.
        seen.append(stat.S_IMODE(os.stat(src).st_mode))
        assert Path(src).parent == tmp_path  # same directory => rename is atomic
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    old = os.umask(0)
    try:
        keys.save_private_key(tmp_path / "k.pem", all_keys[KeyKind.EC_P256])
    finally:
        os.umask(old)
    assert seen == [0o600]
    assert stat.S_IMODE((tmp_path / "k.pem").stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.pem"]


def test_failed_write_keeps_the_old_key_and_leaves_no_temp(
        tmp_path: Path, all_keys: dict[KeyKind, PrivateKey],
        monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "k.pem"
    keys.save_private_key(path, all_keys[KeyKind.EC_P256])
    before = path.read_bytes()

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        keys.save_private_key(path, all_keys[KeyKind.ED25519])
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["k.pem"]


def test_public_key_pem_and_der(all_keys: dict[KeyKind, PrivateKey], tmp_path: Path) -> None:
    for key in all_keys.values():
        pem = keys.public_key_pem(key)
        der = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        assert keys.load_public_key(pem) == key.public_key()
        assert keys.load_public_key(der) == key.public_key()
        (tmp_path / "pub.der").write_bytes(der)
        assert keys.load_public_key_file(tmp_path / "pub.der") == key.public_key()
    rsa_key = all_keys[KeyKind.RSA_2048]
    assert isinstance(rsa_key, rsa.RSAPrivateKey)
    pkcs1 = rsa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.PKCS1)
    assert keys.load_public_key(pkcs1) == rsa_key.public_key()


def test_public_key_garbage_and_unsupported() -> None:
    for data in (b"", b"hello", b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
                 b"\x30\x03\x02\x01\x01"):
        with pytest.raises(KeyFileMalformed):
            keys.load_public_key(data)
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(UnsupportedKeyType, match=r"P-256|secp384r1"):
        keys.load_public_key(p384)


def _expect(error: type[KeyFileError], path: Path, call: Callable[[], object]) -> KeyFileError:
    with pytest.raises(error) as info:
        call()
    assert type(info.value) is error
    assert str(path) in info.value.detail  # every file error names the file
    assert info.value.hint and info.value.as_dict()["error"] == error.__name__
    return info.value


def test_key_file_errors(tmp_path: Path, all_keys: dict[KeyKind, PrivateKey]) -> None:
    key = all_keys[KeyKind.EC_P256]
    missing = tmp_path / "nope.pem"
    _expect(KeyFileMissing, missing, lambda: keys.load_private_key(missing))

    enc = tmp_path / "enc.pem"
    keys.save_private_key(enc, key, "s3cret")
    _expect(KeyPassphraseRequired, enc, lambda: keys.load_private_key(enc))
    _expect(KeyPassphraseWrong, enc, lambda: keys.load_private_key(enc, "wrong"))

    plain = tmp_path / "plain.pem"
    keys.save_private_key(plain, key)
    _expect(KeyFileNotEncrypted, plain, lambda: keys.load_private_key(plain, "s3cret"))

    for mode in (0o644, 0o640, 0o604, 0o620, 0o601):
        os.chmod(plain, mode)
        err = _expect(KeyFileInsecure, plain, lambda: keys.load_private_key(plain))
        assert f"{mode:04o}" in err.detail
    os.chmod(plain, 0o400)  # read-only for the owner is fine
    assert _same_key(keys.load_private_key(plain), key)

    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot base64 at all\n"
                        b"-----END PRIVATE KEY-----\n")
    garbage.chmod(0o600)
    _expect(KeyFileMalformed, garbage, lambda: keys.load_private_key(garbage))
    public_only = tmp_path / "pub.pem"
    public_only.write_bytes(keys.public_key_pem(key))
    public_only.chmod(0o600)
    _expect(KeyFileMalformed, public_only, lambda: keys.load_private_key(public_only))

    directory = tmp_path / "adir"
    directory.mkdir(mode=0o700)
    _expect(KeyFileMalformed, directory, lambda: keys.load_private_key(directory))
    under_file = plain / "k.pem"  # a path through a regular file: ENOTDIR
    _expect(KeyFileInaccessible, under_file, lambda: keys.load_private_key(under_file))

    p384 = tmp_path / "p384.pem"
    p384.write_bytes(ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    p384.chmod(0o600)
    _expect(UnsupportedKeyType, p384, lambda: keys.load_private_key(p384))


def test_symlinked_key_is_followed_but_its_target_mode_is_checked(
        tmp_path: Path, all_keys: dict[KeyKind, PrivateKey]) -> None:
    # Kubernetes mounts Secrets as symlinks; the real file's mode is what matters.
    target = tmp_path / "..data" / "tls.key"
    target.parent.mkdir()
    keys.save_private_key(target, all_keys[KeyKind.ED25519])
    link = tmp_path / "tls.key"
    link.symlink_to(target)
    assert _same_key(keys.load_private_key(link), all_keys[KeyKind.ED25519])
    target.chmod(0o644)
    with pytest.raises(KeyFileInsecure):
        keys.load_private_key(link)


def test_empty_passphrase_is_a_configuration_error(tmp_path: Path,
                                                   all_keys: dict[KeyKind, PrivateKey]) -> None:
    with pytest.raises(ValueError, match="empty passphrase"):
        keys.save_private_key(tmp_path / "k.pem", all_keys[KeyKind.EC_P256], "")


def test_load_or_create(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "svc.pem"
    first = keys.load_or_create_private_key(path, KeyKind.ED25519, "pw")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = keys.load_or_create_private_key(path, KeyKind.ED25519, "pw")
    assert _same_key(first, again)
    with pytest.raises(UnsupportedKeyType, match="ed25519"):
        keys.load_or_create_private_key(path, KeyKind.EC_P256, "pw")
    with pytest.raises(KeyPassphraseRequired):
        keys.load_or_create_private_key(path, KeyKind.ED25519)


def test_load_or_create_race_yields_one_key(tmp_path: Path) -> None:
    path = tmp_path / "svc.pem"
    results: list[PrivateKey] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        results.append(keys.load_or_create_private_key(path, KeyKind.EC_P256))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    on_disk = keys.load_private_key(path)
    assert len(results) == 8
    assert all(_same_key(r, on_disk) for r in results)
    assert [p.name for p in tmp_path.iterdir()] == ["svc.pem"]


# --- JWK and thumbprints ---------------------------------------------------------------------


def test_rfc7638_example_thumbprint() -> None:
    jwk = {"kty": "RSA", "n": RFC7638_N, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"}
    assert keys.jwk_thumbprint(jwk) == RFC7638_THUMBPRINT
    # Optional members and member order do not matter; required members do.
    assert keys.jwk_thumbprint({"e": "AQAB", "n": RFC7638_N, "kty": "RSA"}) == RFC7638_THUMBPRINT
    assert keys.jwk_thumbprint({**jwk, "e": "AQAC"}) != RFC7638_THUMBPRINT
    # The key itself, through our own JWK encoder, gives the same thumbprint.
    rsa_pub = rsa.RSAPublicNumbers(65537, int.from_bytes(_b64d(RFC7638_N), "big")).public_key()
    assert keys.public_jwk(rsa_pub) == {"kty": "RSA", "n": RFC7638_N, "e": "AQAB"}
    assert keys.key_thumbprint(rsa_pub) == RFC7638_THUMBPRINT


def test_rfc8037_ed25519_vector() -> None:
    private = ed25519.Ed25519PrivateKey.from_private_bytes(_b64d(RFC8037_D))
    assert keys.public_jwk(private) == {"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X}
    assert keys.key_thumbprint(private) == RFC8037_THUMBPRINT


def test_public_jwk_matches_pyjwt_independently(all_keys: dict[KeyKind, PrivateKey]) -> None:
    oracles: dict[KeyKind, Any] = {KeyKind.EC_P256: ECAlgorithm, KeyKind.RSA_2048: RSAAlgorithm,
                                   KeyKind.RSA_3072: RSAAlgorithm, KeyKind.ED25519: OKPAlgorithm}
    members = {KeyKind.EC_P256: {"kty", "crv", "x", "y"}, KeyKind.RSA_2048: {"kty", "n", "e"},
               KeyKind.RSA_3072: {"kty", "n", "e"}, KeyKind.ED25519: {"kty", "crv", "x"}}
    for kind, key in all_keys.items():
        ours = keys.public_jwk(key)
        assert set(ours) == members[kind]  # public members only, never "d"
        theirs = oracles[kind].to_jwk(key.public_key(), as_dict=True)
        assert {m: theirs[m] for m in members[kind]} == ours
        assert keys.public_key_from_jwk(ours) == key.public_key()
        thumb = keys.key_thumbprint(key)
        assert len(thumb) == 43 and thumb == keys.jwk_thumbprint({**ours, "kid": "x"})


def test_ec_coordinates_are_fixed_width() -> None:
    # Coordinates with leading zero bytes must still be 32 bytes (RFC 7518 §6.2.1.2).
    for _ in range(300):
        key = ec.generate_private_key(ec.SECP256R1())
        nums = key.public_key().public_numbers()
        if nums.x < 1 << 248 or nums.y < 1 << 248:
            jwk = keys.public_jwk(key)
            assert len(_b64d(jwk["x"])) == len(_b64d(jwk["y"])) == 32
            return
    pytest.skip("no short coordinate in 300 keys (p ~ 2^-6 each)")


@pytest.mark.parametrize("jwk, match", [
    ({"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X, "d": RFC8037_D}, "private"),
    ({"kty": "RSA", "n": RFC7638_N, "e": "AQAB", "p": "AQAB"}, "private"),
    ({"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X + "="}, "base64url"),
    ({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
     "base64url"),
    ({"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X[:-3]}, "valid"),
    ({"kty": "OKP", "crv": "Ed448", "x": RFC8037_X}, "unsupported"),
    ({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}, "32 bytes"),
    ({"kty": "EC", "crv": "P-256", "x": "A" * 43, "y": "A" * 43}, "valid"),  # not on the curve
    ({"kty": "EC", "crv": "P-384", "x": "A" * 64, "y": "A" * 64}, "unsupported"),
    ({"kty": "RSA", "n": "AQAB", "e": "AQAB"}, "valid|small"),
    ({"kty": "RSA", "n": base64.urlsafe_b64encode(b"\xff" * 128).decode().rstrip("="),
      "e": "AQAB"}, "too small"),
    ({"kty": "oct", "k": "c2VjcmV0"}, "private|unsupported"),
    ({"kty": "RSA", "n": 12345, "e": "AQAB"}, "base64url"),
    ({}, "unsupported"),
])
def test_public_key_from_jwk_rejects(jwk: dict[str, Any], match: str) -> None:
    with pytest.raises(JwkInvalid, match=match):
        keys.public_key_from_jwk(jwk)


def test_thumbprint_rejects_incomplete_jwks() -> None:
    for bad in ({"kty": "RSA", "n": RFC7638_N}, {"kty": "oct", "k": "x"}, {"kty": "EC"},
                {"kty": "OKP", "crv": "Ed25519", "x": 5}, {}):
        with pytest.raises(JwkInvalid):
            keys.jwk_thumbprint(bad)


_json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=60))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["kty", "crv", "x", "y", "n", "e", "d", "alg", "kid"]),
                       st.one_of(_json_scalars, st.sampled_from(
                           ["EC", "RSA", "OKP", "P-256", "Ed25519", RFC8037_X, "AQAB"]))))
def test_jwk_parser_fuzz_raises_only_jwk_invalid(jwk: dict[str, Any]) -> None:
    try:
        pub = keys.public_key_from_jwk(jwk)
    except JwkInvalid:
        return
    assert keys.public_jwk(pub)["kty"] == jwk["kty"]


# --- KeyRing ---------------------------------------------------------------------------------


def test_new_ring_publishes_its_active_key(all_keys: dict[KeyKind, PrivateKey]) -> None:
    for key in all_keys.values():
        ring = KeyRing(key)
        (jwk,) = ring.jwks(T0)["keys"]
        assert jwk["kid"] == keys.key_thumbprint(key) == ring.active.kid
        assert jwk["alg"] == keys.default_algorithm(key) and jwk["use"] == "sig"
        assert "d" not in jwk
        assert keys.public_key_from_jwk(jwk) == key.public_key()
    assert KeyRing(all_keys[KeyKind.RSA_2048], alg="PS256").active.alg == "PS256"
    with pytest.raises(ValueError, match="cannot be used"):
        KeyRing(all_keys[KeyKind.RSA_2048], alg="ES256")


def test_rotation_overlap_and_prune(all_keys: dict[KeyKind, PrivateKey]) -> None:
    old, new, newer = (all_keys[KeyKind.EC_P256], all_keys[KeyKind.ED25519],
                       all_keys[KeyKind.RSA_2048])
    ring = KeyRing(old)
    old_kid = ring.active.kid
    active = ring.rotate(new, T0, timedelta(minutes=10))
    assert ring.active is active and active.alg == "EdDSA" and active.not_after is None
    assert ring.retiring[0].kid == old_kid
    assert ring.retiring[0].not_after == T0 + timedelta(minutes=10)
    kids = [k["kid"] for k in ring.jwks(T0 + timedelta(minutes=9, seconds=59))["keys"]]
    assert kids == [active.kid, old_kid]
    assert ring.find(old_kid, T0 + timedelta(minutes=9)) is not None
    # At not_after the old key is no longer published.
    assert [k["kid"] for k in ring.jwks(T0 + timedelta(minutes=10))["keys"]] == [active.kid]
    assert ring.find(old_kid, T0 + timedelta(minutes=10)) is None

    ring.rotate(newer, T0 + timedelta(minutes=5), timedelta(minutes=10))
    assert [k.kid for k in ring.published(T0 + timedelta(minutes=12))] == [
        ring.active.kid, active.kid]
    assert ring.prune(T0 + timedelta(minutes=5)) == []  # nothing over yet
    assert ring.prune(T0 + timedelta(minutes=12)) == [old_kid]
    assert [m.kid for m in ring.members()] == [ring.active.kid, active.kid]


def test_rotation_misuse(all_keys: dict[KeyKind, PrivateKey]) -> None:
    ring = KeyRing(all_keys[KeyKind.EC_P256])
    with pytest.raises(ValueError, match="already"):
        ring.rotate(all_keys[KeyKind.EC_P256], T0, timedelta(minutes=1))
    with pytest.raises(ValueError, match="negative"):
        ring.rotate(all_keys[KeyKind.ED25519], T0, timedelta(seconds=-1))
    with pytest.raises(ValueError, match="timezone"):
        ring.rotate(all_keys[KeyKind.ED25519], datetime(2026, 1, 1), timedelta(minutes=1))
    with pytest.raises(ValueError, match="timezone"):
        ring.jwks(datetime(2026, 1, 1))
    assert len(ring.members()) == 1  # failed rotations changed nothing


def _rotated_ring(all_keys: dict[KeyKind, PrivateKey]) -> KeyRing:
    ring = KeyRing(all_keys[KeyKind.EC_P256])
    ring.rotate(all_keys[KeyKind.RSA_2048], T0, timedelta(hours=1), alg="PS256")
    ring.rotate(all_keys[KeyKind.ED25519], T0 + timedelta(minutes=30), timedelta(hours=1))
    return ring


@pytest.mark.parametrize("passphrase", [None, "ring pass"])
def test_ring_persists_and_reloads_identically(tmp_path: Path, all_keys: dict[KeyKind, PrivateKey],
                                               passphrase: str | None) -> None:
    ring = _rotated_ring(all_keys)
    d = tmp_path / "ring"
    ring.save(d, passphrase)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert sorted(p.name for p in d.iterdir()) == sorted(
        ["index.json", *(f"{m.kid}.pem" for m in ring.members())])
    for p in d.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    back = KeyRing.load(d, passphrase)
    assert [(m.kid, m.alg, m.not_after) for m in back.members()] == [
        (m.kid, m.alg, m.not_after) for m in ring.members()]
    assert all(_same_key(a.private_key, b.private_key)
               for a, b in zip(back.members(), ring.members(), strict=True))
    for t in (T0, T0 + timedelta(minutes=59), T0 + timedelta(hours=2)):
        assert back.jwks(t) == ring.jwks(t)


def test_ring_save_after_prune_deletes_only_its_old_keys(
        tmp_path: Path, all_keys: dict[KeyKind, PrivateKey]) -> None:
    ring = _rotated_ring(all_keys)
    d = tmp_path / "ring"
    ring.save(d)
    (d / "README.pem").write_text("not ours")
    pruned = ring.prune(T0 + timedelta(hours=1))
    assert len(pruned) == 1
    ring.save(d)
    assert not (d / f"{pruned[0]}.pem").exists()
    assert (d / "README.pem").exists()
    assert len(KeyRing.load(d).members()) == 2


def test_ring_not_after_keeps_timezone_instant(tmp_path: Path,
                                               all_keys: dict[KeyKind, PrivateKey]) -> None:
    ring = KeyRing(all_keys[KeyKind.EC_P256])
    helsinki = timezone(timedelta(hours=3))
    ring.rotate(all_keys[KeyKind.ED25519], datetime(2026, 5, 1, 15, 0, 0, 123456, helsinki),
                timedelta(seconds=90))
    ring.save(tmp_path)
    (old,) = KeyRing.load(tmp_path).retiring
    assert old.not_after == datetime(2026, 5, 1, 12, 1, 30, 123456, UTC)


def _corrupt(d: Path, mutate: Callable[[dict[str, Any]], None]) -> None:
    index = json.loads((d / "index.json").read_text())
    mutate(index)
    (d / "index.json").write_text(json.dumps(index))


def test_ring_load_refuses_inconsistent_directories(
        tmp_path: Path, all_keys: dict[KeyKind, PrivateKey]) -> None:
    ring = _rotated_ring(all_keys)
    with pytest.raises(KeyFileMissing, match="index"):
        KeyRing.load(tmp_path / "none")

    cases: list[tuple[Callable[[dict[str, Any]], None], str]] = [
        (lambda i: i.update(format="other/9"), "index"),
        (lambda i: i.update(keys=[]), "non-empty"),
        (lambda i: i.update(active="x" * 43), "active kid|no not_after"),
        (lambda i: i["keys"][0].update(kid="../../etc/passwd"), "invalid kid"),
        (lambda i: i["keys"][0].update(alg="HS256"), "alg"),
        (lambda i: i["keys"][1].update(alg="ES256"), "alg"),  # RSA member claiming ES256
        (lambda i: i["keys"][0].update(not_after="2026-01-01T00:00:00+00:00"), "active key"),
        (lambda i: i["keys"][1].update(not_after=None), "no not_after"),
        (lambda i: i["keys"][1].update(not_after="tomorrow"), "not_after"),
        (lambda i: i["keys"][1].update(not_after="2026-01-01T00:00:00"), "not_after"),  # naive
        (lambda i: i["keys"].append(i["keys"][1]), "twice"),
    ]
    for n, (mutate, match) in enumerate(cases):
        d = tmp_path / f"case{n}"
        ring.save(d)
        _corrupt(d, mutate)
        with pytest.raises(KeyRingError, match=match):
            KeyRing.load(d)

    d = tmp_path / "swapped"
    ring.save(d)
    a, b = ring.members()[0].kid, ring.members()[1].kid
    (d / f"{a}.pem").write_bytes((d / f"{b}.pem").read_bytes())  # file replaced
    with pytest.raises(KeyRingError, match="thumbprint"):
        KeyRing.load(d)

    d = tmp_path / "notjson"
    ring.save(d)
    (d / "index.json").write_text("{")
    with pytest.raises(KeyRingError, match="JSON"):
        KeyRing.load(d)

    d = tmp_path / "lostkey"
    ring.save(d)
    (d / f"{ring.retiring[0].kid}.pem").unlink()
    with pytest.raises(KeyFileMissing):
        KeyRing.load(d)

    d = tmp_path / "encrypted"
    ring.save(d, "pw")
    with pytest.raises(KeyPassphraseRequired):
        KeyRing.load(d)
    with pytest.raises(KeyPassphraseWrong):
        KeyRing.load(d, "not pw")


def test_ring_load_or_create(tmp_path: Path) -> None:
    d = tmp_path / "ring"
    first = KeyRing.load_or_create(d, KeyKind.ED25519)
    assert first.active.alg == "EdDSA"
    again = KeyRing.load_or_create(d, KeyKind.ED25519)
    assert again.active.kid == first.active.kid
    with pytest.raises(FileExistsError):
        KeyRing(keys.generate_private_key()).save(d, exclusive=True)


def test_a_key_retired_in_the_clocks_future_is_withheld(tmp_path: Path) -> None:
    """A rotation dated an hour ahead (the rotating clock ran ahead; or the reader's was
    stepped back since) is not published once the reader's clock is right: publishing it until
    its not_after kept a key rotated away verifying the step's length longer. Within the 60 s
    tolerance (replicas' clocks) it is published; saved and loaded, retired_at survives; an
    index without retired_at (an older ring) keeps the not_after rule alone."""
    ring = KeyRing(generate_private_key(KeyKind.EC_P256))
    old_kid = ring.active.kid
    ahead = T0 + timedelta(hours=1)
    ring.rotate(generate_private_key(KeyKind.EC_P256), ahead, timedelta(minutes=10))
    assert ring.retiring[0].retired_at == ahead
    assert ring.find(old_kid, ahead + timedelta(minutes=5)) is not None   # on the ahead clock
    assert ring.find(old_kid, T0) is None                                 # corrected
    assert ring.find(old_kid, ahead - timedelta(seconds=59)) is not None  # within tolerance
    assert ring.find(old_kid, ahead - timedelta(seconds=61)) is None
    assert ring.prune(T0) == []      # withheld, not forgotten: the reader's clock may be off
    ring.save(tmp_path / "ring")
    loaded = KeyRing.load(tmp_path / "ring")
    assert loaded.retiring[0].retired_at == ahead and loaded.find(old_kid, T0) is None
    index = json.loads((tmp_path / "ring" / "index.json").read_text())
    for entry in index["keys"]:
        entry.pop("retired_at")
    (tmp_path / "ring" / "index.json").write_text(json.dumps(index))
    legacy = KeyRing.load(tmp_path / "ring")
    assert legacy.retiring[0].retired_at is None and legacy.find(old_kid, T0) is not None
