"""The benchmark's world: a real docker-registry, signed images, and `umec webhook` as a process.

1. ``docker-registry`` on loopback (the test fixture's ``run_registry``: anonymous, filesystem
   storage under the work directory).
2. A CI key (``keys.generate_private_key``: ECDSA P-256, what ``umec sign`` uses) and a
   ClusterImagePolicy trusting it for every image of the benchmark's repositories, written to
   the policy directory the webhook reads (``UMEC_ADMISSION_POLICY_DIR``).
3. Images built and pushed by the test helper ``push_image`` (two small layers, a config and
   an OCI manifest; each with its own salt, so each has its own digest), then signed with
   ``admission.signing.sign.sign_image`` -- the call ``umec sign`` makes. Both are timed per image:
   that is the sign + push measurement.
4. Serving certificates (``admission.service.certs.create_webhook_certs`` with ``localhost`` and
   ``127.0.0.1``) and ``python -m umec webhook --host 127.0.0.1`` as a subprocess with its own
   data directory (SQLite record), ``UMEC_LOG_LEVEL=WARNING``; ready when ``/healthz`` answers.
   Its own process, so that its RSS and CPU time can be read from /proc.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the test helpers live in tests/support/
    sys.path.insert(0, str(ROOT))

from admission.core.reference import parse_reference  # noqa: E402
from admission.registry.client import RegistryClient  # noqa: E402
from admission.service.certs import create_webhook_certs  # noqa: E402
from admission.signing.sign import sign_image  # noqa: E402
from keys import PrivateKey, generate_private_key, public_key_pem, save_private_key  # noqa: E402
from tests.support.oci_images import push_image  # noqa: E402
from tests.support.registry import RunningRegistry, free_port, run_registry  # noqa: E402
from tests.support.webhook import policy_doc  # noqa: E402


@dataclass(frozen=True)
class SignedImage:
    tag_ref: str       # host/repo:tag, what a Deployment names
    digest: str        # what the registry serves for the tag
    push_ns: int       # push_image wall time
    sign_ns: int       # sign_image wall time (payload, signature, .sig manifest pushed)

    @property
    def pinned(self) -> str:
        return f"{self.tag_ref.rsplit(':', 1)[0]}@{self.digest}"


def write_key_and_policy(work: Path, registry_host: str, prefix: str) -> PrivateKey:
    """The CI key (private key file for ``umec sign``) and the policy trusting its public key."""
    key = generate_private_key()
    save_private_key(work / "ci.key", key)
    policies = work / "policies"
    policies.mkdir(parents=True, exist_ok=True)
    doc = policy_doc("bench-ci-signed", [f"{registry_host}/{prefix}/**"], [{
        "name": "ci", "threshold": 1,
        "keys": [{"name": "ci", "pem": public_key_pem(key).decode()}]}])
    (policies / "ci.yaml").write_text(yaml.safe_dump(doc))
    return key


async def push_and_sign(registry_host: str, prefix: str, key: PrivateKey, count: int,
                        start: int = 0) -> list[SignedImage]:
    """``count`` fresh images, each pushed and then signed; one client (connections reused),
    as one CI job signing what it built."""
    out: list[SignedImage] = []
    async with RegistryClient() as client:
        for i in range(start, start + count):
            tag_ref = f"{registry_host}/{prefix}/app{i}:1.0"
            t0 = time.perf_counter_ns()
            digest = await push_image(client, tag_ref, salt=f"{prefix}-{i}")
            t1 = time.perf_counter_ns()
            signed = await sign_image(client, parse_reference(tag_ref), key)
            t2 = time.perf_counter_ns()
            if signed != [digest]:
                raise RuntimeError(f"sign_image signed {signed}, pushed {digest}")
            out.append(SignedImage(tag_ref, digest, t1 - t0, t2 - t1))
    return out


@dataclass
class Webhook:
    process: subprocess.Popen[bytes]
    port: int
    ca: Path
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def get(self, path: str) -> tuple[int, bytes]:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        conn = http.client.HTTPSConnection("localhost", self.port, context=ctx, timeout=5)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()


@contextlib.contextmanager
def run_webhook(work: Path, python: str = sys.executable,
                variant: list[str] | None = None, database_url: str = "") -> Iterator[Webhook]:
    """``umec webhook`` over HTTPS on 127.0.0.1 with the policies in ``work/policies``;
    ``variant``: ``serve_variant.py`` with these arguments instead (a what-if server);
    ``database_url``: its database ("": SQLite in ``work/webhook-data``)."""
    certs = create_webhook_certs(work / "certs", "umec-webhook", "umec-system",
                                 extra_names=["localhost", "127.0.0.1"])
    port = free_port()
    # The webhook shares the control plane's database, which `umec server` has migrated
    # already; migrate it here so the webhook starts as it does in a cluster (a process that
    # finds the schema current never loads Alembic).
    from umec.db import open_database
    from umec.settings import Settings
    open_database(database_url or Settings(data_dir=work / "webhook-data")
                  .resolved_database_url())[0].dispose()
    env = {**os.environ, "UMEC_DATA_DIR": str(work / "webhook-data"),
           **({"UMEC_DATABASE_URL": database_url} if database_url else {}),
           "UMEC_ADMISSION_POLICY_DIR": str(work / "policies"),
           "UMEC_WEBHOOK_TLS_CERT": str(certs.cert), "UMEC_WEBHOOK_TLS_KEY": str(certs.key),
           "UMEC_WEBHOOK_PORT": str(port), "UMEC_LOG_LEVEL": "WARNING",
           # Loopback clients without the API server's client certificate; mutual TLS adds one
           # certificate verification per (kept-alive) connection, not per review.
           "UMEC_WEBHOOK_ALLOW_UNAUTHENTICATED": "true"}
    log = work / "webhook.log"
    with log.open("wb") as out:
        command = [python, "-m", "umec", "webhook", "--host", "127.0.0.1"]
        if variant is not None:
            command = [python, str(Path(__file__).with_name("serve_variant.py")), *variant]
        process = subprocess.Popen(command, env=env, cwd=str(ROOT), stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    hook = Webhook(process, port, certs.ca_cert, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"umec webhook exited: {log.read_text()[-2000:]}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if hook.get("/healthz")[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"umec webhook did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield hook
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def registry(work: Path) -> Iterator[RunningRegistry]:
    with run_registry(work / "registry") as running:
        yield running


def umec_sign_cli(image: str, key_file: Path, python: str = sys.executable) -> int:
    """Wall time of one ``umec sign`` process (interpreter start and imports included)."""
    t0 = time.perf_counter_ns()
    done = subprocess.run([python, "-m", "umec", "sign", image, "--key", str(key_file)],
                          cwd=str(ROOT), capture_output=True, text=True, timeout=120,
                          check=False)
    elapsed = time.perf_counter_ns() - t0
    if done.returncode != 0:
        raise RuntimeError(f"umec sign failed: {done.stdout}{done.stderr}")
    return elapsed

