"""Basic and bearer-token auth against real docker-registry instances (htpasswd and token auth)."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid

import pytest

from admission.core.reference import parse_reference
from admission.registry.client import RegistryClient
from admission.registry.credentials import Credentials
from admission.registry.errors import RegistryAuthFailed
from tests.oci_images import push_image
from tests.registry_fixture import (
    USERS,
    RunningRegistry,
    basic_registry,
    requires_registry,
    token_registry,
)

pytestmark = requires_registry
__all__ = ["basic_registry", "token_registry"]


def creds(host: str, user: str = "alice", password: str | None = None) -> Credentials:
    auth = base64.b64encode(f"{user}:{password or USERS[user]}".encode()).decode()
    return Credentials.from_docker_config(json.dumps({"auths": {host: {"auth": auth}}}))


def name(reg: RunningRegistry) -> str:
    return f"{reg.host}/auth-{uuid.uuid4().hex[:8]}/app"


def test_basic_auth_push_and_pull(basic_registry: RunningRegistry) -> None:
    image = f"{name(basic_registry)}:1"

    async def main() -> None:
        async with RegistryClient(credentials=creds(basic_registry.host)) as client:
            digest = await push_image(client, image, salt="basic")
            assert (await client.resolve(parse_reference(image))).digest == digest
            # After the first challenge the client sends Basic up front: one request per call.
            sent = client.requests_sent
            await client.get_manifest(parse_reference(image))
            assert client.requests_sent == sent + 1
        # Another user of the same htpasswd file may read too.
        async with RegistryClient(credentials=creds(basic_registry.host, "bob")) as client:
            assert (await client.get_manifest(parse_reference(image))).digest == digest
    asyncio.run(main())


@pytest.mark.parametrize("credentials", ["none", "wrong-password", "other-registry"])
def test_basic_auth_refused(basic_registry: RunningRegistry, credentials: str) -> None:
    ref = parse_reference(f"{name(basic_registry)}:1")
    given = {"none": None,
             "wrong-password": creds(basic_registry.host, password="not-it"),
             "other-registry": creds("registry.example.com")}[credentials]

    async def main() -> None:
        async with RegistryClient(credentials=given) as client:
            with pytest.raises(RegistryAuthFailed) as err:
                await client.resolve(ref)
            assert str(ref) in err.value.detail and "resolve" in err.value.detail
            assert "imagePullSecrets" in err.value.hint
    asyncio.run(main())


def test_bearer_token_flow(token_registry: RunningRegistry) -> None:
    server = token_registry.token_server
    assert server is not None
    image = f"{name(token_registry)}:1"
    ref = parse_reference(image)

    async def main() -> None:
        async with RegistryClient(credentials=creds(token_registry.host)) as client:
            issued = len(server.issued)
            digest = await push_image(client, image, salt="bearer")
            push_tokens = server.issued[issued:]
            assert push_tokens and all(t["user"] == "alice" for t in push_tokens)
            assert any(f"repository:{ref.repository}:pull,push" in t["scopes"]
                       for t in push_tokens)
            # Pull: one token for the pull scope, then cached for every later request.
            before = len(server.issued)
            assert (await client.resolve(ref)).digest == digest
            manifest = await client.get_manifest(ref)
            for layer in manifest.layers():
                await client.get_blob(ref, layer.digest)
            assert len(server.issued) == before + 1
            assert server.issued[-1]["scopes"][0] == f"repository:{ref.repository}:pull"
    asyncio.run(main())


def test_bearer_identity_token(token_registry: RunningRegistry) -> None:
    """docker login with an OAuth2 refresh token (``identitytoken``): the POST grant."""
    server = token_registry.token_server
    assert server is not None
    server.identity_tokens["refresh-abc"] = "bob"
    image = f"{name(token_registry)}:1"
    config = json.dumps({"auths": {token_registry.host: {"identitytoken": "refresh-abc"}}})

    async def main() -> None:
        async with RegistryClient(credentials=Credentials.from_docker_config(config)) as client:
            digest = await push_image(client, image, salt="identity")
            assert server.issued[-1]["user"] == "bob"
            assert (await client.resolve(parse_reference(image))).digest == digest
    asyncio.run(main())


@pytest.mark.parametrize("credentials", ["anonymous", "wrong-password"])
def test_bearer_refused(token_registry: RunningRegistry, credentials: str) -> None:
    ref = parse_reference(f"{name(token_registry)}:1")
    given = None if credentials == "anonymous" else creds(token_registry.host, password="nope")

    async def main() -> None:
        async with RegistryClient(credentials=given) as client:
            with pytest.raises(RegistryAuthFailed, match="token server"):
                await client.get_manifest(ref)
    asyncio.run(main())
