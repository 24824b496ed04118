"""Sign -> verify round trips and attacks against a real docker-registry on loopback."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography.hazmat.primitives import serialization

from admission.core.cosign import (
    BUNDLE_V03_MEDIA_TYPE,
    GO_ZERO_TIME,
    OCI_MANIFEST_MEDIA_TYPE,
    bundle_layer_digest,
    docker_reference,
    parse_signature_manifest,
    signature_tag,
    simple_signing_payload,
)
from admission.core.keys_cosign import encrypt_cosign_key
from admission.core.reference import parse_reference
from admission.core.verify import (
    IdentityMismatch,
    NoSignatures,
    PayloadDigestMismatch,
    SignatureInvalid,
)
from admission.registry.client import RegistryClient
from admission.signing.sign import load_signing_key_from, sign_image
from admission.signing.verify import ReferenceNotPinned, verify_image_signatures
from keys import KeyKind, PrivateKey, PublicKey, generate_private_key
from tests.support.oci_images import push_image, push_index
from tests.support.registry import RunningRegistry, requires_registry

pytestmark = requires_registry
T = TypeVar("T")
JS = Path(__file__).resolve().parents[1] / "js"

KEY_A = generate_private_key()
KEY_B = generate_private_key()
KEY_ED = generate_private_key(KeyKind.ED25519)


def run(registry: RunningRegistry, body: Callable[[RegistryClient], Awaitable[T]]) -> T:
    async def main() -> T:
        async with RegistryClient(retries=0, timeout=5.0) as client:
            return await body(client)
    return asyncio.run(main())


def repo(registry: RunningRegistry, name: str = "app") -> str:
    return f"{registry.host}/sv-{uuid.uuid4().hex[:8]}/{name}"


def pub(*keys: PrivateKey) -> dict[str, PublicKey]:
    names = {id(KEY_A): "a", id(KEY_B): "b", id(KEY_ED): "ed"}
    return {names[id(k)]: k.public_key() for k in keys}


def test_sign_verify_single_image_appends_without_duplicates(registry: RunningRegistry) -> None:
    name = repo(registry)

    async def body(client: RegistryClient) -> None:
        digest = await push_image(client, f"{name}:v1")
        ref = parse_reference(f"{name}:v1")
        assert await sign_image(client, ref, KEY_A) == [digest]
        pinned = ref.with_digest(digest)
        ok, errors = await verify_image_signatures(client, pinned, pub(KEY_A, KEY_B))
        assert [(r.key_id, r.kind, r.digest) for r in ok] == [("a", "legacy", digest)]
        assert ok[0].identity == docker_reference(ref.registry, ref.repository)
        assert errors == [] or all(isinstance(e, SignatureInvalid) for e in errors)

        sig_ref = ref.with_tag(signature_tag(digest))
        first = await client.get_manifest(sig_ref)
        await sign_image(client, ref, KEY_A)          # same key again: nothing appended
        assert (await client.get_manifest(sig_ref)).raw == first.raw
        await sign_image(client, pinned, KEY_B)
        await sign_image(client, pinned, KEY_ED)
        layers = parse_signature_manifest((await client.get_manifest(sig_ref)).raw)
        assert len(layers) == 3
        ok, errors = await verify_image_signatures(client, pinned, pub(KEY_A, KEY_B, KEY_ED))
        assert sorted(r.key_id for r in ok) == ["a", "b", "ed"] and errors == []

        # What is in the registry is cosign's format: payload, media type, tag, config.
        blob = await client.get_blob(ref, layers[0].digest)
        assert blob == simple_signing_payload(docker_reference(ref.registry, ref.repository),
                                              digest)
        sig = await client.get_manifest(sig_ref)
        assert sig.media_type == OCI_MANIFEST_MEDIA_TYPE
        config = sig.config()
        assert config is not None
        assert json.loads(await client.get_blob(ref, config.digest))["created"] == GO_ZERO_TIME

    run(registry, body)


def test_multi_arch_recursive_legacy_and_bundle(registry: RunningRegistry) -> None:
    name = repo(registry)

    async def body(client: RegistryClient) -> None:
        index, children = await push_index(client, f"{name}:multi")
        ref = parse_reference(f"{name}:multi")
        signed = await sign_image(client, ref, KEY_A, recursive=True, bundle=True)
        assert signed[0] == index and set(signed[1:]) == set(children.values())
        for digest in signed:
            ok, errors = await verify_image_signatures(client, ref.with_digest(digest),
                                                       pub(KEY_A, KEY_B))
            assert sorted((r.key_id, r.kind) for r in ok) == [("a", "bundle"), ("a", "legacy")]
            assert errors == [] or all(isinstance(e, SignatureInvalid) for e in errors)
        # Bundles are not duplicated either.
        await sign_image(client, ref, KEY_A, recursive=True, bundle=True)
        refs = await client.referrers(ref.with_digest(index), artifact_type=BUNDLE_V03_MEDIA_TYPE)
        assert len(refs) == 1

        # Without --recursive only the index is signed: an arm64 node's pull is unsigned.
        other = parse_reference(f"{name}:other")
        index2, children2 = await push_index(client, f"{name}:other", salt="2")
        assert await sign_image(client, other, KEY_A) == [index2]
        ok, errors = await verify_image_signatures(
            client, other.with_digest(children2["linux/arm64"]), pub(KEY_A))
        assert ok == [] and [type(e) for e in errors] == [NoSignatures]

    run(registry, body)


def test_attacks_are_refused_with_named_errors(registry: RunningRegistry) -> None:
    name = repo(registry)

    async def body(client: RegistryClient) -> None:
        signed = await push_image(client, f"{name}:signed", salt="s")
        unsigned = await push_image(client, f"{name}:unsigned", salt="u")
        ref = parse_reference(f"{name}:signed")
        await sign_image(client, ref, KEY_A, bundle=True)

        # Unsigned image.
        ok, errors = await verify_image_signatures(client, ref.with_digest(unsigned), pub(KEY_A))
        assert ok == [] and [type(e) for e in errors] == [NoSignatures]
        # Signed, but by a key the policy does not trust (legacy and bundle both refuse).
        ok, errors = await verify_image_signatures(client, ref.with_digest(signed), pub(KEY_B))
        assert ok == [] and len(errors) == 2
        assert all(isinstance(e, SignatureInvalid) for e in errors)
        # A valid .sig copied onto the unsigned image's tag.
        sig = await client.get_manifest(ref.with_tag(signature_tag(signed)))
        await client.put_manifest(ref, sig.raw, sig.media_type, tag=signature_tag(unsigned))
        ok, errors = await verify_image_signatures(client, ref.with_digest(unsigned), pub(KEY_A))
        assert ok == [] and any(isinstance(e, PayloadDigestMismatch) for e in errors)
        assert "signature is for " + signed in str(errors[0])
        # The same bytes pushed to another repository: the signature names the first one.
        other = parse_reference(repo(registry, "copy") + ":signed")
        image = await client.get_manifest(ref.with_digest(signed))
        for manifest in (image, sig):
            for blob in [*manifest.layers(), manifest.config()]:
                assert blob is not None
                await client.put_blob(other, await client.get_blob(ref, blob.digest))
        await client.put_manifest(other, image.raw, image.media_type, tag="signed")
        await client.put_manifest(other, sig.raw, sig.media_type, tag=signature_tag(signed))
        ok, errors = await verify_image_signatures(client, other.with_digest(signed), pub(KEY_A),
                                                   bundles=False)
        assert ok == [] and [type(e) for e in errors] == [IdentityMismatch]
        # The tag moved to another image after signing: resolving it now yields an unsigned
        # digest; the old digest keeps its signature.
        moved = await push_image(client, f"{name}:signed", salt="moved")
        now = (await client.resolve(ref)).digest
        assert now == moved != signed
        ok, _ = await verify_image_signatures(client, ref.with_digest(now), pub(KEY_A))
        assert ok == []
        ok, _ = await verify_image_signatures(client, ref.with_digest(signed), pub(KEY_A))
        assert {r.kind for r in ok} == {"legacy", "bundle"}
        # A tag is never verified as such.
        ok, errors = await verify_image_signatures(client, ref, pub(KEY_A))
        assert ok == [] and isinstance(errors[0], ReferenceNotPinned)

    run(registry, body)


def test_signing_keys_from_cosign_file_and_ci_environment(tmp_path: Path,
                                                          registry: RunningRegistry) -> None:
    key = generate_private_key()
    path = tmp_path / "cosign.key"
    path.write_bytes(encrypt_cosign_key(key, b"pw", scrypt=(1024, 8, 1)))
    loaded = load_signing_key_from(str(path), env={"COSIGN_PASSWORD": "pw"})
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    from_env = load_signing_key_from("env://SIGNING_KEY", env={"SIGNING_KEY": pem})
    name = repo(registry)

    async def body(client: RegistryClient) -> None:
        digest = await push_image(client, f"{name}:v1")
        ref = parse_reference(f"{name}@{digest}")
        await sign_image(client, ref, loaded)
        await sign_image(client, ref, from_env)  # same key: recognised as a duplicate
        sig = await client.get_manifest(ref.with_tag(signature_tag(digest)))
        assert len(parse_signature_manifest(sig.raw)) == 1
        ok, _ = await verify_image_signatures(client, ref, {"ci": key.public_key()})
        assert [r.key_id for r in ok] == ["ci"]

    run(registry, body)


@pytest.mark.skipif(not shutil.which("node") or not (JS / "node_modules/@sigstore/verify").is_dir(),
                    reason="node or tests/js/node_modules missing (cd tests/js && npm ci)")
def test_our_bundles_verify_with_sigstore_js(tmp_path: Path, registry: RunningRegistry) -> None:
    name = repo(registry)

    def node(bundle: bytes, artifact: bytes, key: PublicKey) -> subprocess.CompletedProcess[str]:
        (tmp_path / "b.json").write_bytes(bundle)
        (tmp_path / "artifact").write_bytes(artifact)
        (tmp_path / "k.pem").write_bytes(key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        return subprocess.run(["node", str(JS / "verify_bundle.mjs"), str(tmp_path / "b.json"),
                               str(tmp_path / "artifact"), str(tmp_path / "k.pem")],
                              capture_output=True, text=True, timeout=60, check=False)

    async def body(client: RegistryClient) -> list[tuple[bytes, bytes]]:
        digest = await push_image(client, f"{name}:v1")
        ref = parse_reference(f"{name}:v1").with_digest(digest)
        await sign_image(client, ref, KEY_A, bundle=True)
        manifest = (await client.get_manifest(ref)).raw
        [descriptor] = await client.referrers(ref, artifact_type=BUNDLE_V03_MEDIA_TYPE)
        layer, size = bundle_layer_digest((await client.get_manifest(
            ref.with_digest(descriptor.digest))).raw)
        return [(await client.get_blob(ref, layer, max_size=size), manifest)]

    [(bundle, manifest)] = run(registry, body)
    good = node(bundle, manifest, KEY_A.public_key())
    assert good.returncode == 0, good.stdout + good.stderr
    # The oracle is not a rubber stamp: another key and another artifact both fail.
    assert node(bundle, manifest, KEY_B.public_key()).returncode == 1
    assert node(bundle, manifest + b" ", KEY_A.public_key()).returncode == 1

