"""The one error contract (kernel.errors, kernel.problems): a checked error leaves any route with
the status its class carries, rendered once as RFC 9457 problem+json; nothing else leaks.

The apps here are real FastAPI apps driven over ASGI; the domain errors are the real classes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from admission.core.errors import AdmissionError
from admission.core.review import ReviewMalformed, ReviewTooLarge
from attest.core.errors import AttestationError, MalformedStructure
from attest.service.limits import RateLimited
from attest.service.registrar import NodeNotFound, TooManyActivationFailures
from kernel.errors import CheckedError
from kernel.problems import (
    PROBLEM_JSON,
    checked_response,
    install_error_handlers,
    problem_response,
)
from keys.errors import JwtExpired, KeyFileInsecure, KeysError
from mec_api.camera.snapshots import CameraBusy, SnapshotError, UnknownCamera
from mec_api.inference.errors import ImageTooManyBytes, InferenceError
from mec_api.mec011.core import Mec011RuleError, ReadOnlyAttribute
from mec_api.mec011.store.service_mgmt import PreconditionFailed, StoreError
from mec_api.problems import ProblemError
from mec_api.tokens.errors import TokenRefused
from umec.cli_errors import CliError, as_cli_error


class Conflicting(CheckedError):
    check = "thing.conflict"
    hint = "Read the thing again, then retry."
    status = 409


class Throttled(CheckedError):
    check = "thing.rate"
    hint = "Wait."
    status = 429

    def problem_headers(self) -> dict[str, str]:
        return {"Retry-After": "3"}


class SecretSetup(CheckedError):
    check = "setup.secret"
    public = False


class Body(BaseModel):
    n: int


def client_for(error: Exception, *, validation_status: int = 422) -> TestClient:
    app = FastAPI()
    install_error_handlers(app, validation_status=validation_status)

    @app.get("/fail")
    def fail() -> None:
        raise error

    @app.post("/oauth2/fail")
    def oauth_fail() -> None:
        raise error

    @app.post("/typed")
    def typed(body: Body) -> dict[str, int]:
        return {"n": body.n}
    return TestClient(app, raise_server_exceptions=False)


def problem_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


def test_a_checked_error_leaves_with_its_class_status_check_detail_and_hint() -> None:
    r = client_for(Conflicting("thing 7 changed meanwhile")).get("/fail")
    assert problem_of(r, 409) == {
        "type": "urn:umec:thing.conflict", "title": "Conflict", "status": 409,
        "check": "thing.conflict", "detail": "thing 7 changed meanwhile",
        "hint": "Read the thing again, then retry.", "instance": "/fail"}


def test_the_error_adds_its_headers() -> None:
    r = client_for(Throttled("too many")).get("/fail")
    problem_of(r, 429)
    assert r.headers["retry-after"] == "3"


def test_check_and_hint_may_be_named_per_instance() -> None:
    err = Conflicting("x", check="thing.other", hint="Do y.")
    assert (err.check, err.hint, Conflicting.check) == ("thing.other", "Do y.", "thing.conflict")
    body = problem_of(client_for(err).get("/fail"), 409)
    assert (body["check"], body["hint"], body["type"]) == ("thing.other", "Do y.",
                                                           "urn:umec:thing.other")


def test_status_per_instance_where_it_is_decided_per_instance() -> None:
    """A plain HTTP problem (mec_api's ProblemError) and a schema error carry their status."""
    r = client_for(ProblemError(412, "Precondition Failed", "stale ETag")).get("/fail")
    body = problem_of(r, 412)
    assert body["type"] == "about:blank" and body["check"] == "http.412"
    for status in (400, 422):
        body = problem_of(client_for(Conflicting("-"), validation_status=status)
                          .post("/typed", json={"n": "seven"}), status)
        assert body["check"] == "request.schema" and body["errors"][0]["loc"] == ["body", "n"]


def test_str_stays_human_readable() -> None:
    assert str(Conflicting("thing 7 changed")) == "thing.conflict: thing 7 changed"
    assert str(NodeNotFound("no node 'a'")) == "node.unknown: no node 'a'"
    assert str(UnknownCamera("usb")).startswith("check camera_configured failed: no camera 'usb'")
    assert str(StoreError("gone")) == "gone"


def test_unexpected_errors_leak_nothing() -> None:
    secret = "password=hunter2 at /etc/umec/key.pem"
    for error in (RuntimeError(secret), SecretSetup(secret),
                  KeyFileInsecure(f"{secret} is world-readable")):
        r = client_for(error).get("/fail")
        body = problem_of(r, 500)
        assert body["check"] == "internal", body
        assert "hunter2" not in r.text and "Traceback" not in r.text
        assert type(error).__name__ not in r.text


def test_under_oauth2_the_answer_is_rfc6749_json() -> None:
    r = client_for(Throttled("too many")).post("/oauth2/fail")
    assert r.status_code == 429 and r.headers["content-type"] == "application/json"
    assert r.json()["check"] == "thing.rate" and r.json()["error_description"] == "too many"
    assert r.headers["cache-control"] == "no-store"


def test_attestation_errors_keep_their_type_and_class_named_title() -> None:
    body = problem_of(client_for(NodeNotFound("no node named 'a'")).get("/fail"), 404)
    assert body["type"] == "urn:umec:attest:node.unknown"
    assert body["title"] == body["error"] == "NodeNotFound"
    assert body["detail"] == "no node named 'a'" and body["hint"]
    r = client_for(RateLimited("too many from 10.0.0.1", 2.4)).get("/fail")
    assert problem_of(r, 429)["check"] == "rate.limited" and r.headers["retry-after"] == "2"


@pytest.mark.parametrize(("error", "status"), [
    (AttestationError("x"), 403), (MalformedStructure("x"), 400), (NodeNotFound("x"), 404),
    (TooManyActivationFailures("x"), 423), (ReviewMalformed("x"), 400),
    (ReviewTooLarge("x"), 413), (ImageTooManyBytes(10, 5), 413), (UnknownCamera("c"), 404),
    (CameraBusy("c", 1.0), 503), (PreconditionFailed("x"), 412),
    (Mec011RuleError("rule", "x"), 400), (ReadOnlyAttribute("rule", "x"), 403),
    (JwtExpired("x"), 401), (ProblemError(418, "I'm a teapot", "x"), 418),
])
def test_statuses_live_on_the_error_classes(error: CheckedError, status: int) -> None:
    assert error.status == status
    problem_of(client_for(error).get("/fail"), status)


def test_every_domain_base_is_a_checked_error() -> None:
    for base in (AttestationError, AdmissionError, InferenceError, ProblemError, StoreError,
                 SnapshotError, TokenRefused, KeysError, Mec011RuleError, CliError):
        assert issubclass(base, CheckedError), base


def test_the_cli_reads_check_and_hint_from_any_checked_error() -> None:
    line = as_cli_error(Conflicting("thing 7 changed")).line()
    assert line == ("error: thing.conflict: thing 7 changed — what to do: "
                    "Read the thing again, then retry.")


def test_kernel_imports_no_domain() -> None:
    code = ("import sys, kernel.errors, kernel.problems; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'attest', 'admission', 'mec_api', 'umec', 'keys'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


TEXT = st.text(max_size=200)


@settings(max_examples=200, deadline=None)
@given(status=st.integers(400, 599), check=TEXT, detail=TEXT, hint=TEXT,
       path=st.sampled_from(["", "/x", "/attest/v1/nodes/a", "/sensor/v1/tags"]))
def test_any_text_renders_as_valid_problem_json(status: int, check: str, detail: str,
                                                hint: str, path: str) -> None:
    error = ProblemError(status, "Title", detail, check=check or None, hint=hint or None)
    expected = (status, check or error.check, detail, hint or error.hint)
    for response, fields in ((problem_response(path, status, check, detail, hint),
                              (status, check, detail, hint)),
                             (checked_response(error, path), expected)):
        assert response.status_code == status
        assert response.headers["content-type"] == PROBLEM_JSON
        body = json.loads(bytes(response.body))
        assert (body["status"], body["check"], body["detail"], body["hint"]) == fields
        assert isinstance(body["type"], str) and isinstance(body["title"], str)
        assert body.get("instance") == (path or None)
