"""Basic and bearer-token auth against real docker-registry instances (htpasswd and token auth)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.server
import json
import socket
import threading
import uuid
from collections.abc import Iterator

import httpx
import pytest

from admission.core.reference import parse_reference
from admission.registry.auth import Challenge, fetch_token
from admission.registry.client import RegistryClient
from admission.registry.credentials import Credentials, RegistryCredential
from admission.registry.errors import RegistryAuthFailed
from tests.support.oci_images import push_image
from tests.support.registry import USERS, RunningRegistry, requires_registry

pytestmark = requires_registry


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


def non_loopback_ipv4() -> str | None:
    """This machine's outgoing IPv4 address (a UDP connect sends nothing), if it has one."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))
        ip = str(s.getsockname()[0])
        return None if ip.startswith("127.") or ip == "0.0.0.0" else ip
    return None


@contextlib.contextmanager
def token_server(host: str) -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A real HTTP token server on ``host`` that records what each request carried."""
    seen: list[dict[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            seen.append({"method": self.command, "path": self.path,
                         "authorization": self.headers.get("Authorization", ""),
                         "body": self.rfile.read(length).decode() if length else ""})
            body = json.dumps({"token": "issued", "expires_in": 60}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = answer

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((host, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}/token", seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("secret", ["password", "identity-token"])
def test_token_server_over_plain_http_gets_secrets_only_on_loopback(secret: str) -> None:
    """Credentials go to a token server only over TLS or on loopback: a plain-HTTP realm
    elsewhere is asked anonymously (the secret would cross the network in clear)."""
    remote = non_loopback_ipv4()
    if remote is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    credential = (RegistryCredential("reg.example", username="alice", password="pw-secret")
                  if secret == "password" else
                  RegistryCredential("reg.example", identity_token="refresh-secret"))

    async def fetch(realm: str) -> tuple[str, float]:
        async with httpx.AsyncClient(trust_env=False) as http:
            return await fetch_token(http, Challenge("bearer", {"realm": realm}),
                                     ["repository:app:pull"], credential, "test")

    for host, gets_secret in ((remote, False), ("127.0.0.1", True)):
        with token_server(host) as (realm, seen):
            assert asyncio.run(fetch(realm)) == ("issued", 60.0)
        sent = seen[0]
        carried = sent["authorization"] + sent["body"]
        if not gets_secret:
            assert sent["method"] == "GET" and carried == "", (host, sent)
        elif secret == "password":
            assert sent["authorization"] == "Basic " + base64.b64encode(b"alice:pw-secret").decode()
        else:
            assert sent["method"] == "POST" and "refresh_token=refresh-secret" in sent["body"]
