"""Boot event logs through the whole service: replay against the quote, reference digests."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from attest.core.eventlog import parse_event_log
from tests.support.simagent import SimulatedNode
from tests.support.simtpm import SimulatedTpm
from umec.app import build_server
from umec.localserver import ServerThread
from umec.settings import Settings

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "eventlogs"
BOOT_LOG = FIXTURES / "tpm2-tools" / "event-bootorder.bin"
OTHER_LOG = FIXTURES / "tpm2-tools" / "event-postcode.bin"
pytestmark = pytest.mark.skipif(not BOOT_LOG.exists(), reason=f"fixtures absent: {FIXTURES}")
SELECTION = [0, 1, 2, 3, 4, 5, 6, 7]


def booted_tpm(raw: bytes) -> SimulatedTpm:
    """A simulated TPM whose PCRs were extended exactly as the firmware logged."""
    tpm = SimulatedTpm()
    for event in parse_event_log(raw).events:
        if event.event_type == 3:  # EV_NO_ACTION is never extended
            continue
        for bank, digest in event.digests.items():
            if bank in ("sha1", "sha256"):
                tpm.extend_digest(event.pcr, bank, digest)
    return tpm


def digest_of_pcr4(raw: bytes) -> list[str]:
    return [e.digests["sha256"].hex() for e in parse_event_log(raw).events
            if e.pcr == 4 and e.event_type != 3]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[[dict[str, object]], tuple[httpx.Client, Settings]]]:
    stack: list[ServerThread] = []

    def run(policy_extra: dict[str, object]) -> tuple[httpx.Client, Settings]:
        policies = tmp_path / "policies"
        policies.mkdir(exist_ok=True)
        (policies / "pc.yaml").write_text(yaml.safe_dump(
            {"name": "pc", "selection": {"sha256": SELECTION}, **policy_extra}))
        settings = Settings(data_dir=tmp_path / "srv", policy_dir=policies,
                            default_node_class="pc")
        server = build_server(settings)
        thread = ServerThread(server.app).start()
        stack.append(thread)
        run.server = server  # type: ignore[attr-defined]
        return httpx.Client(base_url=thread.url, timeout=30), settings
    yield run  # type: ignore[misc]
    for t in stack:
        t.stop()


def enrolled(start: Callable[..., tuple[httpx.Client, Settings]], tpm: SimulatedTpm,
             **policy: object) -> SimulatedNode:
    client, _ = start(policy)
    server = start.server  # type: ignore[attr-defined]
    server.attest.config.ek_allowlist = frozenset(
        {hashlib.sha256(tpm.ek_public.marshal_tpm2b()).hexdigest()})
    node = SimulatedNode("pc-1", client, tpm)
    node.enroll_and_activate()
    return node


def send_with_log(node: SimulatedNode, log: bytes | None) -> dict[str, object]:
    ch = node.challenge()
    resp = node.send(ch["nonce_bytes"], *node.quote(ch), event_log=log)
    assert resp.status_code == 200, resp.text
    verdict: dict[str, object] = resp.json()
    return verdict


def checks(verdict: dict[str, object]) -> list[str]:
    return [f["check"] for f in verdict["failed_checks"]]  # type: ignore[attr-defined, index]


def test_genuine_log_replays_to_quote(start) -> None:  # type: ignore[no-untyped-def]
    raw = BOOT_LOG.read_bytes()
    node = enrolled(start, booted_tpm(raw))
    verdict = send_with_log(node, raw)
    assert verdict["trusted"] is True, verdict


def test_log_edited_after_the_fact(start) -> None:  # type: ignore[no-untyped-def]
    raw = BOOT_LOG.read_bytes()
    node = enrolled(start, booted_tpm(raw))
    target = bytes.fromhex(digest_of_pcr4(raw)[0])
    offset = raw.index(target)
    edited = raw[:offset] + bytes([raw[offset] ^ 0xFF]) + raw[offset + 1:]
    verdict = send_with_log(node, edited)
    assert verdict["state"] == "untrusted"
    assert "eventlog.replay" in checks(verdict)


def test_log_of_another_boot(start) -> None:  # type: ignore[no-untyped-def]
    node = enrolled(start, booted_tpm(BOOT_LOG.read_bytes()))
    verdict = send_with_log(node, OTHER_LOG.read_bytes())
    assert verdict["trusted"] is False and "eventlog.replay" in checks(verdict)


def test_reference_digests_allowed_and_required(start) -> None:  # type: ignore[no-untyped-def]
    raw = BOOT_LOG.read_bytes()
    pcr4 = digest_of_pcr4(raw)
    node = enrolled(start, booted_tpm(raw), eventlog={
        "bank": "sha256", "pcrs": {4: {"allowed": pcr4, "required": pcr4[:1]}}})
    assert send_with_log(node, raw)["trusted"] is True


def test_reference_digest_not_allowed(start) -> None:  # type: ignore[no-untyped-def]
    raw = BOOT_LOG.read_bytes()
    pcr4 = digest_of_pcr4(raw)
    node = enrolled(start, booted_tpm(raw), eventlog={
        "bank": "sha256", "pcrs": {4: {"allowed": pcr4[1:]}}})
    verdict = send_with_log(node, raw)
    assert checks(verdict) == ["eventlog.digest_not_allowed"]


def test_required_digest_missing(start) -> None:  # type: ignore[no-untyped-def]
    raw = BOOT_LOG.read_bytes()
    node = enrolled(start, booted_tpm(raw), eventlog={
        "bank": "sha256", "pcrs": {4: {"required": ["ab" * 32]}}})
    assert checks(send_with_log(node, raw)) == ["eventlog.required_missing"]


def test_required_log_not_sent(start) -> None:  # type: ignore[no-untyped-def]
    node = enrolled(start, booted_tpm(BOOT_LOG.read_bytes()), require_event_log=True)
    assert checks(send_with_log(node, None)) == ["policy.event_log_required"]


def test_garbage_log(start) -> None:  # type: ignore[no-untyped-def]
    node = enrolled(start, booted_tpm(BOOT_LOG.read_bytes()))
    verdict = send_with_log(node, BOOT_LOG.read_bytes()[:1000])
    assert verdict["trusted"] is False and checks(verdict)[0].startswith("eventlog.")
