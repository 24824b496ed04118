"""Helpers for the admission policy/webhook tests: in-process fakes of the webhook's Protocols
(resolver, verifier, records; the registry and signatures are G's and H's, tested with a real
registry there), AdmissionReview builders for every kind, and a real uvicorn HTTPS server."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from admission.core.keyless import KeylessAuthority
from admission.registry.credentials import Credentials
from admission.service.certs import WebhookCerts, create_webhook_certs
from admission.service.records import AdmittedImage
from keys import PrivateKey, PublicKey, generate_private_key, key_thumbprint, public_key_pem

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64


@dataclass(frozen=True)
class Sig:
    digest: str
    key_id: str
    kind: str = "legacy"
    identity: str | None = None
    reference: str | None = None    # the signed docker-reference (None: as a bundle)


def key() -> PrivateKey:
    return generate_private_key()


def kid(k: PrivateKey | PublicKey) -> str:
    return key_thumbprint(k)


def policy_doc(name: str, images: list[str], authorities: list[dict[str, Any]], *,
               namespace: str | None = None, mode: str = "enforce",
               no_match: str | None = None, match: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"images": images, "authorities": authorities, "mode": mode}
    if no_match:
        spec["noMatch"] = no_match
    if match:
        spec["match"] = match
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": "umec.io/v1alpha1",
            "kind": "ImagePolicy" if namespace else "ClusterImagePolicy",
            "metadata": meta, "spec": spec}


def authority(name: str, keys: Mapping[str, PrivateKey], threshold: int = 1,
              required: Sequence[str] = ()) -> dict[str, Any]:
    return {"name": name, "threshold": threshold, "required": list(required),
            "keys": [{"name": n, "pem": public_key_pem(k).decode()} for n, k in keys.items()]}


@dataclass
class FakeResolver:
    tags: dict[str, str] = field(default_factory=dict)      # image string → digest
    delay: float = 0.0
    hang: bool = False
    calls: int = 0
    credentials_seen: list[Credentials | None] = field(default_factory=list)

    async def resolve(self, image: str, credentials: Credentials | None = None) -> str:
        self.calls += 1
        self.credentials_seen.append(credentials)
        if self.hang:
            await asyncio.Event().wait()
        await asyncio.sleep(self.delay)
        if image not in self.tags:
            raise ConnectionError(f"registry unreachable for {image}")
        return self.tags[image]


@dataclass
class FakeVerifier:
    """Signatures per ``name@digest``: what H's verifier would find valid under the keys."""

    signed: dict[str, list[tuple[str, PrivateKey]]] = field(default_factory=dict)
    delay: float = 0.0
    hang: bool = False
    calls: int = 0

    def sign(self, ref: str, k: PrivateKey, digest: str | None = None) -> None:
        self.signed.setdefault(ref, []).append((digest or ref.split("@")[1], k))

    async def verify(self, image: str, keys: Mapping[str, PublicKey],
                     credentials: Credentials | None = None,
                     keyless: Sequence[KeylessAuthority] = ()) -> list[Sig]:
        self.calls += 1
        if self.hang:
            await asyncio.Event().wait()
        await asyncio.sleep(self.delay)
        trusted = set(keys)
        return [Sig(d, kid(k)) for d, k in self.signed.get(image, []) if kid(k) in trusted]


@dataclass
class FakeRecords:
    rows: list[dict[str, Any]] = field(default_factory=list)

    def record(self, *, namespace: str, name: str, uid: str, images: Sequence[AdmittedImage],
               verified: bool, policy_generation: str) -> None:
        self.rows.append({"namespace": namespace, "name": name, "uid": uid,
                          "images": list(images), "verified": verified,
                          "generation": policy_generation})


def pod_spec(images: Sequence[str], init: Sequence[str] = (),
             ephemeral: Sequence[str] = ()) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": f"c{i}", "image": im}
                                           for i, im in enumerate(images)]}
    if init:
        spec["initContainers"] = [{"name": f"i{i}", "image": im} for i, im in enumerate(init)]
    if ephemeral:
        spec["ephemeralContainers"] = [{"name": f"e{i}", "image": im}
                                       for i, im in enumerate(ephemeral)]
    return spec


def workload(kind: str, spec: dict[str, Any], name: str = "app",
             namespace: str = "tenant-a", uid: str = "") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if uid:
        meta["uid"] = uid
    template = {"metadata": {"labels": {"app": name}}, "spec": spec}
    body: dict[str, Any]
    if kind == "Pod":
        body = spec
    elif kind == "CronJob":
        body = {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": template}}}
    else:
        body = {"template": template}
    return {"apiVersion": "v1" if kind == "Pod" else "apps/v1", "kind": kind,
            "metadata": meta, "spec": body}


def review(obj: dict[str, Any], *, uid: str = "req-1", operation: str = "CREATE",
           sub_resource: str | None = None, namespace: str | None = None) -> dict[str, Any]:
    kind = obj["kind"]
    req: dict[str, Any] = {
        "uid": uid, "kind": {"group": "", "version": "v1", "kind": kind},
        "resource": {"group": "", "version": "v1", "resource": kind.lower() + "s"},
        "namespace": namespace or obj["metadata"]["namespace"],
        "name": obj["metadata"].get("name", ""), "operation": operation, "object": obj,
        "userInfo": {"username": "tester"}, "dryRun": False}
    if sub_resource:
        req["subResource"] = sub_resource
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _serve(app: Any, **tls: Any) -> Iterator[int]:
    """Serve ``app`` with uvicorn on a free loopback port with these TLS options."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error",
                            access_log=False, lifespan="off", **tls)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def webhook_test_certs(cert_dir: Path) -> WebhookCerts:
    """``umec webhook certs`` output with loopback names on the serving certificate."""
    return create_webhook_certs(cert_dir, "umec-webhook", "umec-system",
                                extra_names=["localhost", "127.0.0.1"])


@contextlib.contextmanager
def serve_tls(app: Any, cert_dir: Path) -> Iterator[tuple[str, Path]]:
    """Serve ``app`` over real TLS on loopback with certs from ``admission.service.certs``;
    yields (base URL, CA file)."""
    certs = webhook_test_certs(cert_dir)
    with _serve(app, ssl_certfile=str(certs.cert), ssl_keyfile=str(certs.key)) as port:
        yield f"https://localhost:{port}", certs.ca_cert


# A peer refused in the TLS handshake: with TLS 1.2 the client sees it while connecting; with
# TLS 1.3 the server checks the client certificate after the client's handshake is done, so
# the client sees the server's alert (or the closed connection) on its first read or write.
HANDSHAKE_REFUSED = (httpx.ConnectError, httpx.ReadError, httpx.WriteError,
                     httpx.RemoteProtocolError)


def client_tls(certs: WebhookCerts, client: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    """A client's TLS context trusting the webhook's serving CA, presenting ``client``
    (certificate file, key file) when given."""
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    if client is not None:
        ctx.load_cert_chain(str(client[0]), str(client[1]))
    return ctx


@contextlib.contextmanager
def serve_mtls(app: Any, cert_dir: Path) -> Iterator[tuple[str, WebhookCerts]]:
    """Serve ``app`` as ``umec webhook`` does with ``UMEC_WEBHOOK_CLIENT_CA``: uvicorn's TLS
    options from :func:`umec.webhook_process.tls_options`, so a client must present a
    certificate from the client CA (``certs.client_cert``/``client_key`` is the API server's).
    Yields (base URL, the certificates)."""
    from umec.settings import Settings
    from umec.webhook_process import tls_options
    certs = webhook_test_certs(cert_dir)
    settings = Settings(data_dir=cert_dir / "data", webhook_tls_cert=certs.cert,
                        webhook_tls_key=certs.key, webhook_client_ca=certs.client_ca_cert)
    with _serve(app, **tls_options(settings)) as port:
        yield f"https://localhost:{port}", certs
