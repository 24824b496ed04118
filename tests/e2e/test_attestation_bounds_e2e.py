"""A tenant's hostile ``.att`` against ``umec webhook`` as a real process (issue 12, review F2).

The webhook runs as the cluster runs it (``umec webhook``, mTLS, SQLite records, a real
docker-registry). ``RLIMIT_AS``/``RLIMIT_DATA`` cannot bound it: regopy's snmalloc reserves its
address space up front and aborts under any such limit ("Failed to initialise snmalloc", tried
up to 70 GiB); the container's limit is a memory cgroup, i.e. resident memory, so the test
reads the process's peak RSS (``VmHWM``) instead, grown by less than :data:`PEAK_GROWTH` over
the hostile review. (Its peak before, ~126 MiB after start and one review, is already near the
Deployment's 128 MiB limit: reported, not this test's subject.)

A tenant who can push to its own repository writes an ``.att`` image of unsigned envelopes made
to cost memory: an envelope padded with ``[],[],…`` (millions of objects to ``json.loads``),
envelopes whose base64 payload is such padding (the payload must not be parsed before a
signature verifies), one declaring 7 MiB (over the per-envelope cap: not fetched), and enough 1
MiB envelopes that holding them all at once would show. The answer is a denial naming
``attestation.malformed``; the process's peak RSS grows by a few MiB at most, and it answers
the next review.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from admission.core.attestations import (
    DSSE_MEDIA_TYPE,
    MAX_ENVELOPE_BYTES,
    SLSA_V1,
    attestation_layer,
    attestation_tag,
    build_attestation_image,
    build_statement,
    envelope_json,
    sign_envelope,
)
from admission.core.cosign import OCI_MANIFEST_MEDIA_TYPE, SignatureLayer
from admission.core.reference import parse_reference
from admission.registry.client import RegistryClient
from admission.signing.provenance import BuildValues, slsa_v1_predicate
from admission.signing.sign import sign_bytes, sign_image
from keys import PrivateKey, generate_private_key, public_key_pem
from tests.support.oci_images import push_image
from tests.support.registry import RunningRegistry, requires_registry
from tests.support.webhook import (
    client_tls,
    free_port,
    pod_spec,
    policy_doc,
    review,
    webhook_test_certs,
    workload,
)

pytestmark = requires_registry
PEAK_GROWTH = 9 << 20           # what reviewing the hostile .att may add to the peak RSS
BUILDER = "https://ci.example/builder"
SOURCE = "https://git.example/acme/app"


def _padded_envelope(size: int) -> bytes:
    """In-bounds bytes that ``json.loads`` turns into ~size/3 lists (unsigned)."""
    head = b'{"payloadType":"application/vnd.in-toto+json","signatures":[{"sig":"AA=="}],' \
           b'"payload":"","pad":['
    return head + b"[]," * ((size - len(head) - 4) // 3) + b"[]]}"


def _padded_payload(size: int, salt: int) -> bytes:
    """A well-formed envelope whose payload is a statement padded with ``[],[],…``."""
    body = b'{"_type":"https://in-toto.io/Statement/v1","pad":[' + \
        b"[]," * ((size * 3 // 4 - 200) // 3) + b'%d]}' % salt
    return envelope_json("application/vnd.in-toto+json", body, [b"\x00" * 64])


def _hostile_layers() -> list[SignatureLayer]:
    annotations = {"dev.cosignproject.cosign/signature": "", "predicateType": SLSA_V1}
    blobs = [_padded_envelope(MAX_ENVELOPE_BYTES - 64),
             _padded_payload(7 << 20, 0),                       # over the per-envelope cap
             *(_padded_payload(MAX_ENVELOPE_BYTES - 256, i) for i in range(1, 8))]
    assert all(len(b) <= MAX_ENVELOPE_BYTES for i, b in enumerate(blobs) if i != 1)
    return [SignatureLayer(b, annotations, DSSE_MEDIA_TYPE) for b in blobs]


async def _publish(base: str, ci: PrivateKey) -> dict[str, str]:
    """``good``: signed, with CI's provenance. ``evil``: signed, with the hostile .att."""
    async with RegistryClient() as client:
        digests = {}
        for name in ("good", "evil"):
            ref = parse_reference(f"{base}/{name}:1.0")
            digests[name] = await push_image(client, str(ref), salt=name + base)
            await sign_image(client, ref, ci)
        good = parse_reference(f"{base}/good:1.0")
        statement = build_statement(
            "slsaprovenance1", json.dumps(slsa_v1_predicate(BuildValues(
                BUILDER, SOURCE, "ab" * 20))).encode(),
            repository=f"{good.registry}/{good.repository}", digest=digests["good"],
            timestamp="2025-01-01T00:00:00Z")
        envelope = sign_envelope(statement, lambda m: sign_bytes(ci, m))
        for name, layers in (("good", [attestation_layer(envelope, SLSA_V1)]),
                             ("evil", _hostile_layers())):
            ref = parse_reference(f"{base}/{name}:1.0")
            image = build_attestation_image(layers)
            for layer in layers:
                await client.put_blob(ref, layer.payload)
            await client.put_blob(ref, image.config)
            await client.put_manifest(ref, image.manifest, OCI_MANIFEST_MEDIA_TYPE,
                                      tag=attestation_tag(digests[name]))
        return digests


def _status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) << 10
    raise AssertionError(f"no {field} in /proc/{pid}/status")


class Webhook:
    def __init__(self, proc: subprocess.Popen[str], url: str, tls: Any) -> None:
        self.proc, self.url, self.tls = proc, url, tls

    def validate(self, image: str, uid: str) -> dict[str, Any]:
        pod = workload("Pod", pod_spec([image]), uid=uid)
        answer = httpx.post(f"{self.url}/validate", content=json.dumps(review(pod, uid=uid)),
                            headers={"content-type": "application/json"}, verify=self.tls,
                            timeout=60)
        assert answer.status_code == 200, answer.text
        return dict(answer.json()["response"])


@pytest.fixture
def webhook(tmp_path: Path, registry: RunningRegistry) -> Iterator[tuple[Webhook, str, PrivateKey]]:
    ci = generate_private_key()
    base = f"{registry.host}/bounds-{uuid.uuid4().hex[:8]}"
    pem = public_key_pem(ci.public_key()).decode()
    doc = policy_doc("attested", [f"{base}/**"], [{"name": "ci", "keys": [{"name": "ci",
                                                                          "pem": pem}]}])
    doc["spec"]["attestations"] = [{"name": "provenance", "predicateType": "slsaprovenance1",
                                    "keys": [{"name": "ci", "pem": pem}],
                                    "conditions": {"sourceRepository": SOURCE}}]
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "attested.yaml").write_text(yaml.safe_dump(doc))
    certs = webhook_test_certs(tmp_path / "certs")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("UMEC_")}
    env.update({"UMEC_DATA_DIR": str(tmp_path / "srv"),
                "UMEC_ADMISSION_POLICY_DIR": str(tmp_path / "policies"),
                "UMEC_WEBHOOK_TLS_CERT": str(certs.cert), "UMEC_WEBHOOK_TLS_KEY": str(certs.key),
                "UMEC_WEBHOOK_CLIENT_CA": str(certs.client_ca_cert),
                "UMEC_WEBHOOK_PORT": str(port), "UMEC_LOG_LEVEL": "warning"})
    proc = subprocess.Popen([sys.executable, "-m", "umec", "webhook", "--host", "127.0.0.1"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    hook = Webhook(proc, f"https://localhost:{port}",
                   client_tls(certs, (certs.client_cert, certs.client_key)))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{hook.url}/healthz", verify=hook.tls).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "umec webhook did not start"
            time.sleep(0.2)
        yield hook, base, ci
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def test_a_hostile_att_is_denied_in_bounded_memory_and_the_webhook_lives(
        webhook: tuple[Webhook, str, PrivateKey]) -> None:
    hook, base, ci = webhook
    digests = asyncio.run(_publish(base, ci))
    assert hook.validate(f"{base}/good@{digests['good']}", "good-1")["allowed"] is True
    before = _status(hook.proc.pid, "VmHWM")
    denied = hook.validate(f"{base}/evil@{digests['evil']}", "evil-1")
    grown = _status(hook.proc.pid, "VmHWM") - before
    print(f"webhook VmHWM before {before >> 20} MiB, grown {grown / 2**20:.1f} MiB, "
          f"VmRSS {_status(hook.proc.pid, 'VmRSS') >> 20} MiB")
    assert denied["allowed"] is False
    message = denied["status"]["message"]
    assert ": attestation.malformed: ClusterImagePolicy/attested: attestation provenance: " \
        in message, message
    assert grown < PEAK_GROWTH, f"peak RSS grew by {grown >> 20} MiB"
    assert hook.proc.poll() is None
    assert hook.validate(f"{base}/good@{digests['good']}", "good-2")["allowed"] is True
    assert hook.validate(f"{base}/evil@{digests['evil']}", "evil-2")["allowed"] is False


def test_the_padding_is_what_it_claims() -> None:
    """The hostile blobs are in bounds where they must be and cost what the test says when
    parsed without bounds (so a bound removed shows in the webhook's peak)."""
    raw = _padded_envelope(MAX_ENVELOPE_BYTES - 64)
    assert len(raw) <= MAX_ENVELOPE_BYTES and json.loads(raw)["pad"][0] == []
    payload = json.loads(_padded_payload(MAX_ENVELOPE_BYTES - 256, 3))["payload"]
    assert json.loads(base64.b64decode(payload))["pad"][-1] == 3
