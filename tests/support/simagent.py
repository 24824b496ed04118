"""A simulated node speaking the attestation protocol over HTTP with a ``SimulatedTpm``.

For benchmarks (thousands of nodes against one server) and fast protocol tests. The TPM formats
are byte-exact, so the server cannot tell it from a real agent; every step can be overridden to
craft attacks.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import httpx

from attest.agent import HELD_CHALLENGE_MARGIN_SECONDS
from tests.support.simtpm import SimulatedTpm


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def pcr_body(values: dict[str, dict[int, bytes]]) -> dict[str, dict[str, str]]:
    return {b: {str(i): v.hex() for i, v in vals.items()} for b, vals in values.items()}


class SimulatedNode:
    def __init__(self, name: str, client: httpx.Client, tpm: SimulatedTpm | None = None,
                 node_class: str | None = None) -> None:
        self.name, self.client = name, client
        self.tpm = tpm or SimulatedTpm()
        self.node_class = node_class
        self.base = f"/attest/v1/nodes/{name}"
        self.next_challenge: dict[str, Any] | None = None  # the latest verdict's, if any

    def enroll(self) -> httpx.Response:
        return self.client.post("/attest/v1/nodes", json={
            "name": self.name, "ek_public": b64(self.tpm.ek_public.marshal_tpm2b()),
            "ak_public": b64(self.tpm.ak_public.marshal_tpm2b()), "node_class": self.node_class})

    def enroll_and_activate(self) -> None:
        resp = self.enroll()
        resp.raise_for_status()
        ch = resp.json()
        secret = self.tpm.activate_credential(base64.b64decode(ch["credential_blob"]),
                                              base64.b64decode(ch["encrypted_secret"]))
        self.client.post(f"{self.base}/activate", json={
            "enrollment_id": ch["enrollment_id"], "secret": b64(secret)}).raise_for_status()

    def challenge(self) -> dict[str, Any]:
        resp = self.client.post(f"{self.base}/challenge")
        resp.raise_for_status()
        ch: dict[str, Any] = resp.json()
        ch["nonce_bytes"] = base64.b64decode(ch["nonce"])
        return ch

    def quote(self, ch: dict[str, Any]) -> tuple[bytes, bytes, dict[str, dict[int, bytes]]]:
        selection = {b: frozenset(v) for b, v in ch["selection"].items()}
        return self.tpm.quote(ch["nonce_bytes"], selection)

    def send(self, nonce: bytes, attest: bytes, signature: bytes,
             pcrs: dict[str, dict[int, bytes]], event_log: bytes | None = None) -> httpx.Response:
        return self.client.post(f"{self.base}/evidence", json={
            "nonce": b64(nonce), "quote": b64(attest), "signature": b64(signature),
            "pcrs": pcr_body(pcrs), "event_log": b64(event_log) if event_log else None})

    def attest(self, *, use_next: bool = False) -> dict[str, Any]:
        """One round; with ``use_next``, over the previous verdict's ``next_challenge`` when
        there is one (the agent's one-request round), else over a fresh challenge."""
        held, self.next_challenge = self.next_challenge, None
        usable = use_next and held is not None and time.monotonic() < held["usable_until"]
        ch = held if usable and held is not None else self.challenge()
        resp = self.send(ch["nonce_bytes"], *self.quote(ch))
        resp.raise_for_status()
        verdict: dict[str, Any] = resp.json()
        following = verdict.get("next_challenge")
        if isinstance(following, dict):
            # Held as the agent holds it: for its lifetime less the agent's margin.
            self.next_challenge = {
                **following, "nonce_bytes": base64.b64decode(following["nonce"]),
                "usable_until": time.monotonic() + following["expires_in"]
                - HELD_CHALLENGE_MARGIN_SECONDS}
        return verdict

