"""A webhook app served as ``umec webhook`` serves it, lifespan included (its background jobs,
such as the policy watch, run), over real TLS on loopback; and a signed image in a real
registry to review."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from admission.core.reference import parse_reference
from admission.registry.client import RegistryClient
from admission.signing.sign import sign_image
from keys import PrivateKey
from tests.support.oci_images import push_image
from tests.support.webhook import free_port, webhook_test_certs


@contextlib.contextmanager
def serve_live(app: Any, cert_dir: Path) -> Iterator[tuple[str, Path]]:
    """Serve ``app`` with its lifespan on a free loopback port; yields (base URL, CA file)."""
    certs = webhook_test_certs(cert_dir)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="error", access_log=False, lifespan="on",
        ssl_certfile=str(certs.cert), ssl_keyfile=str(certs.key)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"https://localhost:{port}", certs.ca_cert
    finally:
        server.should_exit = True
        thread.join(15)


def push_signed(reference: str, *signers: PrivateKey) -> str:
    """Push a small image to ``reference`` (a tag), sign it with each key; its digest."""
    async def go() -> str:
        async with RegistryClient() as client:
            digest = await push_image(client, reference, salt=reference)
            for key in signers:
                await sign_image(client, parse_reference(reference), key)
            return digest
    return asyncio.run(go())
