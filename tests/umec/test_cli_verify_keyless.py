"""``umec verify`` with cosign's keyless flags (issue 12): legacy keyless ``.sig`` signatures
(Fulcio certificate and chain, Rekor SET in the annotations) in a real docker-registry,
verified offline against ``--trusted-root`` / ``--certificate-chain`` by the webhook's own
functions.

The signatures are made as ``cosign sign`` (keyless) makes them, by
:func:`tests.support.cosign_keyless.sign_keyless` with a :class:`MiniSigstore`'s CA and Rekor.
Every refusal is pinned on its exit code and on the check id the stderr line (and the JSON
document) names, so a signature refused for another reason fails the test.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from admission.core.cosign import OCI_MANIFEST_MEDIA_TYPE, build_signature_image, signature_tag
from admission.core.reference import parse_reference
from admission.registry.client import RegistryClient
from keys import generate_private_key, public_key_pem
from tests.support.cli import assert_error, clean_env, umec
from tests.support.cosign_keyless import KeylessSignature, pem, sign_keyless
from tests.support.mini_sigstore import CertificateAuthority, MiniSigstore
from tests.support.oci_images import push_image
from tests.support.registry import RunningRegistry, requires_registry
from umec.cli_errors import EXIT_FAILED, EXIT_USAGE, UsageError
from umec.cli_keyless import KeylessFlags, is_keyless

WORKFLOW = "https://github.com/acme/app/.github/workflows/release.yml@refs/heads/main"
ISSUER = "https://token.actions.example"
WHO = ["--certificate-identity", WORKFLOW, "--certificate-oidc-issuer", ISSUER]


@pytest.fixture(scope="module")
def mini() -> MiniSigstore:
    return MiniSigstore()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str | None]:
    return {**clean_env(tmp_path), "SIGSTORE_REKOR_PUBLIC_KEY": None}


@pytest.fixture
def root(tmp_path: Path, mini: MiniSigstore) -> Path:
    path = tmp_path / "trusted_root.json"
    path.write_bytes(mini.trusted_root())
    return path


async def _push(name: str, signature: KeylessSignature | None) -> str:
    """An image (and, unless None, its keyless ``.sig``) in the registry: ``name@digest``."""
    async with RegistryClient(retries=0, timeout=5.0) as client:
        digest = await push_image(client, f"{name}:1.0", salt=name)
        if signature is not None:
            await _attach(client, name, digest, signature)
    return f"{name}@{digest}"


async def _attach(client: RegistryClient, name: str, digest: str,
                  signature: KeylessSignature, **annotations: str | None) -> None:
    layer = signature.layer(**annotations)
    ref = parse_reference(f"{name}@{digest}")
    image = build_signature_image([layer])
    await client.put_blob(ref, layer.payload)
    await client.put_blob(ref, image.config)
    await client.put_manifest(ref, image.manifest, OCI_MANIFEST_MEDIA_TYPE,
                              tag=signature_tag(digest))


def _signed(registry: RunningRegistry, mini: MiniSigstore, *, identity: str = WORKFLOW,
            ca: CertificateAuthority | None = None, tamper: bool = False,
            signed_name: str | None = None) -> str:
    """A pushed image with a keyless signature of ``identity`` by ``ca`` (default the mini CA);
    ``tamper`` flips a bit of the signature; ``signed_name`` is the repository the payload
    names (default the image's own)."""
    name = f"{registry.host}/kl-cli-{uuid.uuid4().hex[:8]}/app"

    async def go() -> str:
        async with RegistryClient(retries=0, timeout=5.0) as client:
            digest = await push_image(client, f"{name}:1.0", salt=name)
            sig = sign_keyless(mini, signed_name or name, digest, identity=identity,
                               issuer=ISSUER, ca=ca)
            if tamper:
                flipped = bytearray(sig.signature)
                flipped[-3] ^= 0x01
                sig = replace(sig, signature=bytes(flipped))
            await _attach(client, name, digest, sig)
        return f"{name}@{digest}"
    return asyncio.run(go())


def _refused(result: tuple[int, str, str], check: str, *needles: str) -> str:
    line = assert_error(result, EXIT_FAILED, *needles)
    assert line.startswith(f"error: {check}: "), line
    return line


def _json(result: tuple[int, str, str]) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(result[1])
    return doc


# --- accepted ---------------------------------------------------------------------------------

@requires_registry
def test_keyless_signature_verifies_with_identity_and_issuer(
        registry: RunningRegistry, mini: MiniSigstore, root: Path,
        env: dict[str, str | None]) -> None:
    image = _signed(registry, mini)
    code, out, err = umec(["verify", image, *WHO, "--trusted-root", str(root)], env)
    assert code == 0 and err == "", (out, err)
    assert "verified: 1 keyless signer" in out and f"{WORKFLOW} (issuer {ISSUER})" in out

    result = umec(["verify", image, *WHO, "--trusted-root", str(root), "--output", "json"], env)
    assert result[0] == 0, result
    doc = _json(result)
    assert doc["image"] == image and doc["verified"] is True and doc["failures"] == []
    [sig] = doc["signatures"]
    digest = image.split("@")[1]
    assert sig["digest"] == digest and sig["format"] == "legacy"
    assert sig["identity"] == WORKFLOW and sig["reference"] == image.split("@")[0]
    assert sig["signer"].startswith("keyless:sha256:") and sig["signer"].endswith(
        f" {ISSUER} {WORKFLOW}")

    code, out, _ = umec(["verify", image, "--certificate-identity-regexp",
                         r"^https://github\.com/acme/", "--certificate-oidc-issuer-regexp",
                         r"^https://token\.actions\.example$", "--trusted-root", str(root),
                         "--output", "yaml"], env)
    assert code == 0, out
    assert yaml.safe_load(out)["signatures"][0]["identity"] == WORKFLOW


@requires_registry
def test_certificate_chain_with_the_rekor_key_from_the_environment(
        registry: RunningRegistry, mini: MiniSigstore, tmp_path: Path, root: Path,
        env: dict[str, str | None]) -> None:
    """cosign's other offline form: the Fulcio chain as PEM, Rekor's key from
    SIGSTORE_REKOR_PUBLIC_KEY; or the chain replacing the CAs of --trusted-root."""
    image = _signed(registry, mini)
    chain, rekor = tmp_path / "fulcio.pem", tmp_path / "rekor.pub"
    chain.write_text(pem(mini.ca.intermediate, mini.ca.root))
    rekor.write_bytes(mini.tlog.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with_rekor = {**env, "SIGSTORE_REKOR_PUBLIC_KEY": str(rekor)}
    code, out, err = umec(["verify", image, *WHO, "--certificate-chain", str(chain)], with_rekor)
    assert code == 0 and "verified: 1 keyless signer" in out, (out, err)
    code, out, err = umec(["verify", image, *WHO, "--certificate-chain", str(chain),
                           "--trusted-root", str(root)], env)
    assert code == 0, (out, err)
    assert_error(umec(["verify", image, *WHO, "--certificate-chain", str(chain)], env),
                 EXIT_USAGE, "needs Rekor's public key", "SIGSTORE_REKOR_PUBLIC_KEY")


# --- refused: exit 1, the failed check named ---------------------------------------------------

@requires_registry
def test_wrong_identity_or_issuer_is_refused(registry: RunningRegistry, mini: MiniSigstore,
                                             root: Path, env: dict[str, str | None]) -> None:
    image = _signed(registry, mini)
    trust = ["--trusted-root", str(root)]
    _refused(umec(["verify", image, "--certificate-identity", "https://github.com/evil/x",
                   "--certificate-oidc-issuer", ISSUER, *trust], env),
             "signature.keyless.identity", "matches none")
    _refused(umec(["verify", image, "--certificate-identity", WORKFLOW,
                   "--certificate-oidc-issuer", "https://accounts.example", *trust], env),
             "signature.keyless.identity", "issued by " + ISSUER)
    _refused(umec(["verify", image, "--certificate-identity-regexp", "^https://github.com/evil/",
                   "--certificate-oidc-issuer", ISSUER, *trust], env),
             "signature.keyless.identity")
    result = umec(["verify", image, "--certificate-identity", WORKFLOW,
                   "--certificate-oidc-issuer", "https://accounts.example", *trust,
                   "--output", "json"], env)
    _refused(result, "signature.keyless.identity")
    doc = _json(result)
    assert doc["verified"] is False and doc["signatures"] == []
    assert [f["check"] for f in doc["failures"]] == ["signature.keyless.identity"]


@requires_registry
def test_a_chain_from_another_root_is_refused(registry: RunningRegistry, mini: MiniSigstore,
                                              tmp_path: Path, root: Path,
                                              env: dict[str, str | None]) -> None:
    # Signed by a rogue CA (logged in the trusted Rekor): the chain does not reach the root.
    rogue = CertificateAuthority.create("rogue")
    forged = _signed(registry, mini, ca=rogue)
    _refused(umec(["verify", forged, *WHO, "--trusted-root", str(root)], env),
             "signature.keyless.chain", "does not chain")
    # Genuine signature, but the operator's chain is another CA's.
    genuine = _signed(registry, mini)
    other = tmp_path / "other.pem"
    other.write_text(pem(rogue.intermediate, rogue.root))
    _refused(umec(["verify", genuine, *WHO, "--trusted-root", str(root), "--certificate-chain",
                   str(other)], env), "signature.keyless.chain")
    # Another Sigstore instance's trusted root altogether: its Rekor did not log it.
    foreign = tmp_path / "foreign.json"
    foreign.write_bytes(MiniSigstore().trusted_root())
    _refused(umec(["verify", genuine, *WHO, "--trusted-root", str(foreign)], env),
             "signature.keyless.set", "no transparency log")


@requires_registry
def test_a_tampered_or_moved_signature_is_refused(registry: RunningRegistry,
                                                  mini: MiniSigstore, root: Path,
                                                  env: dict[str, str | None]) -> None:
    trust = [*WHO, "--trusted-root", str(root)]
    tampered = _signed(registry, mini, tamper=True)
    _refused(umec(["verify", tampered, *trust], env), "signature.keyless.tlog_entry",
             "logs another signature")
    # A valid keyless signature made for another repository, copied next to this image.
    copied = _signed(registry, mini, signed_name=f"{registry.host}/team-a/app")
    _refused(umec(["verify", copied, *trust], env), "signature.identity", "team-a/app")
    unsigned = asyncio.run(_push(f"{registry.host}/kl-cli-{uuid.uuid4().hex[:8]}/app", None))
    _refused(umec(["verify", unsigned, *trust], env), "signature.missing")


# --- usage: exit 2, before any registry ---------------------------------------------------------

def test_modes_and_flags_are_usage_errors(tmp_path: Path, mini: MiniSigstore, root: Path,
                                          env: dict[str, str | None]) -> None:
    """Each is refused before any file or registry is read (127.0.0.1:1 is never asked)."""
    image = "127.0.0.1:1/app:1"
    pub = tmp_path / "ci.pub"
    pub.write_bytes(public_key_pem(generate_private_key()))
    trust = ["--trusted-root", str(root)]
    line = assert_error(umec(["verify", image, "--key", str(pub), *WHO, *trust], env),
                        EXIT_USAGE, "exclude each other", "--certificate-identity")
    assert line.startswith("error: usage: ")
    assert_error(umec(["verify", image, "--key", str(pub), "--trusted-root", str(root)], env),
                 EXIT_USAGE, "--key and --trusted-root exclude each other")
    assert_error(umec(["verify", image], env), EXIT_USAGE, "pass --key or the keyless flags")
    assert_error(umec(["verify", image, "--certificate-oidc-issuer", ISSUER, *trust], env),
                 EXIT_USAGE, "needs --certificate-identity or --certificate-identity-regexp")
    assert_error(umec(["verify", image, "--certificate-identity", WORKFLOW, *trust], env),
                 EXIT_USAGE, "needs --certificate-oidc-issuer")
    assert_error(umec(["verify", image, *WHO, "--certificate-identity-regexp", "x", *trust],
                      env), EXIT_USAGE, "--certificate-identity and "
                                        "--certificate-identity-regexp exclude each other")
    assert_error(umec(["verify", image, *WHO], env), EXIT_USAGE, "needs --trusted-root")
    assert_error(umec(["verify", image, "--certificate-identity-regexp", "(",
                       "--certificate-oidc-issuer", ISSUER, *trust], env),
                 EXIT_USAGE, "not a regular expression")
    assert_error(umec(["verify", image, *WHO, *trust, "--threshold", "2"], env), EXIT_USAGE,
                 "--threshold 2")
    bad = tmp_path / "bad.json"
    bad.write_text('{"mediaType": "something else"}')
    line = assert_error(umec(["verify", image, *WHO, "--trusted-root", str(bad)], env),
                        EXIT_USAGE, "not a Sigstore trusted root")
    assert line.startswith("error: keyless.trust_root: ")
    assert_error(umec(["verify", image, *WHO, "--trusted-root", str(tmp_path / "none.json")],
                      env), EXIT_USAGE, "No such file")
    garbage = tmp_path / "chain.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\n" + base64.b64encode(b"x").decode() +
                       "\n-----END CERTIFICATE-----\n")
    assert_error(umec(["verify", image, *WHO, *trust, "--certificate-chain", str(garbage)], env),
                 EXIT_USAGE, "not PEM certificates")


def test_verify_attestation_takes_the_flags_and_says_keyless_is_not_verified(
        tmp_path: Path, root: Path, env: dict[str, str | None]) -> None:
    """cosign's flags are recognised by `umec verify-attestation`, with the same one-mode
    rule; keyless attestations are refused as not verified (exit 2), never passed."""
    image = "127.0.0.1:1/app:1"
    pub = tmp_path / "ci.pub"
    pub.write_bytes(public_key_pem(generate_private_key()))
    trust = ["--trusted-root", str(root)]
    assert_error(umec(["verify-attestation", image, "--key", str(pub), *WHO, *trust], env),
                 EXIT_USAGE, "exclude each other")
    assert_error(umec(["verify-attestation", image, "--type", "spdxjson"], env), EXIT_USAGE,
                 "pass --key or the keyless flags")
    assert_error(umec(["verify-attestation", image, "--certificate-identity", WORKFLOW, *trust],
                      env), EXIT_USAGE, "needs --certificate-oidc-issuer")
    line = assert_error(umec(["verify-attestation", image, *WHO, *trust], env), EXIT_USAGE,
                        "not verified yet", "--key")
    assert line.startswith("error: attestation.keyless_unsupported: ")


_maybe_text = st.none() | st.text(min_size=1, max_size=5)
_maybe_path = st.none() | st.just(Path("trusted_root.json"))


@given(keys=st.lists(st.just(Path("ci.pub")), max_size=2),
       flags=st.builds(KeylessFlags, _maybe_text, _maybe_text, _maybe_text, _maybe_text,
                       _maybe_path, _maybe_path))
def test_exactly_one_mode_property(keys: list[Path], flags: KeylessFlags) -> None:
    """Key mode iff --key and no keyless flag; keyless mode iff no --key, exactly one of each
    identity/issuer pair and some trust material; anything else is a usage error."""
    complete = ((flags.identity is None) != (flags.identity_regexp is None)
                and (flags.issuer is None) != (flags.issuer_regexp is None)
                and (flags.trusted_root is not None or flags.certificate_chain is not None))
    expected = False if keys and not flags.given() else \
        True if not keys and flags.given() and complete else None
    if expected is None:
        with pytest.raises(UsageError):
            is_keyless(keys, flags)
    else:
        assert is_keyless(keys, flags) is expected
