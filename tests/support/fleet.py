"""Attesting nodes for fault tests: simulated TPMs over HTTP, every answer kept for the checks."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

from admission.service.records import AdmittedImage, SqlAdmissionRecords
from tests.support.pcr_policy import k3s_policy
from tests.support.simagent import SimulatedNode
from tests.support.tokens import D1
from umec.db import open_database

PROBLEM_JSON = "application/problem+json"


def write_policy(tmp: Path, interval_seconds: float, app_pcr: str | None = None) -> Path:
    """The node class ``pi-k3s``; with ``app_pcr``, PCR 14 must hold that value."""
    policies = tmp / "policies"
    policies.mkdir(exist_ok=True)
    (policies / "pi-k3s.yaml").write_text(k3s_policy(app_pcr, interval_seconds=interval_seconds))
    return policies


def ek_allowlist(nodes: list[SimulatedNode]) -> str:
    """UMEC_EK_ALLOWLIST for these nodes' EKs (JSON list of sha256 hex)."""
    return json.dumps([hashlib.sha256(n.tpm.ek_public.marshal_tpm2b()).hexdigest()
                       for n in nodes])


@dataclass
class Answer:
    at: float
    step: str
    status: int | None
    content_type: str = ""
    body: dict[str, Any] = field(default_factory=dict)
    retry_after: str | None = None
    error: str = ""


def answer(at: float, step: str, resp: httpx.Response) -> Answer:
    try:
        body = resp.json()
    except ValueError:
        body = {"raw": resp.text[:300]}
    return Answer(at, step, resp.status_code, resp.headers.get("content-type", ""),
                  body if isinstance(body, dict) else {"list": body},
                  resp.headers.get("retry-after"))


class Driver(threading.Thread):
    """One node attesting every ``period`` seconds until stopped, keeping every answer."""

    def __init__(self, node: SimulatedNode, period: float = 1.0) -> None:
        super().__init__(daemon=True, name=f"driver-{node.name}")
        self.node, self.period = node, period
        self.answers: list[Answer] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            self.round()
            self.halt.wait(self.period)

    def round(self) -> None:
        t = time.monotonic()
        try:
            resp = self.node.client.post(f"{self.node.base}/challenge")
            self.answers.append(answer(t, "challenge", resp))
            if resp.status_code != 200:
                return
            ch = resp.json()
            ch["nonce_bytes"] = base64.b64decode(ch["nonce"])
            resp = self.node.send(ch["nonce_bytes"], *self.node.quote(ch))
            self.answers.append(answer(time.monotonic(), "evidence", resp))
        except httpx.HTTPError as exc:
            self.answers.append(Answer(t, "transport", None, error=repr(exc)))

    def stop(self) -> None:
        self.halt.set()
        self.join(10)

    def trusted_after(self, t: float) -> float | None:
        """When the first trusted verdict at or after ``t`` arrived."""
        return next((a.at for a in self.answers if a.at >= t and a.step == "evidence"
                     and a.status == 200 and a.body.get("state") == "trusted"), None)


def untyped(answers: list[Answer]) -> list[Answer]:
    """Answers that are neither a success nor the typed 'database unavailable' refusal."""
    bad = []
    for a in answers:
        if a.status == 200:
            continue
        typed = (a.status == 503 and a.content_type.startswith(PROBLEM_JSON)
                 and a.body.get("check") == "database.unavailable"
                 and bool(a.body.get("hint")) and a.retry_after is not None)
        if not typed:
            bad.append(a)
    return bad


def states_seen(answers: list[Answer]) -> set[str]:
    return {str(a.body.get("state")) for a in answers if a.step == "evidence" and a.status == 200}


def events(database_url: str) -> dict[str, list[tuple[str | None, str]]]:
    """attest_events per node, oldest first: (previous, state)."""
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as db:
            rows = db.execute(text("SELECT node, previous, state FROM attest_events "
                                   "ORDER BY at, id")).all()
    finally:
        engine.dispose()
    out: dict[str, list[tuple[str | None, str]]] = {}
    for node, previous, state in rows:
        out.setdefault(node, []).append((previous, state))
    return out


def query(database_url: str, sql: str, **params: Any) -> list[Any]:
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as db:
            return list(db.execute(text(sql), params).all())
    finally:
        engine.dispose()


def admit(database_url: str) -> None:
    """The admission record of tenant-a/app-1 (uid-app-1): one verified image, signed by ci."""
    engine, sessions = open_database(database_url)
    try:
        SqlAdmissionRecords(sessions).record(
            namespace="tenant-a", name="app-1", uid="uid-app-1",
            images=[AdmittedImage("spec.containers[0]", f"reg/app@{D1}", D1, ("ci",))],
            verified=True, policy_generation="g1")
    finally:
        engine.dispose()
