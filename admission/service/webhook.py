"""The admission webhook's HTTP layer: the module-level :data:`router` and
:func:`create_webhook_app`, which puts the :class:`WebhookDeps` on ``app.state.webhook`` and
includes the router. Routes read the deps through :data:`admission.service.deps.Webhook`.

Routes: ``POST /mutate`` and ``POST /validate`` (AdmissionReview v1 in and out, flow in
:mod:`admission.service.admit`), ``GET /healthz``, ``GET /readyz`` (policies loaded, database
answering; else 503 ``webhook.policies_loading`` or ``database.reachable``), ``GET /metrics``
(Prometheus text, for the metrics token, or a loopback peer when none is set:
:mod:`kernel.metrics_access`).

Request handling fails closed and never leaks a stack trace:
- the body is read in chunks and refused once it passes the size limit (3 MiB by default, the
  API server's own limit), before any JSON decoding; a declared Content-Length over the limit
  is refused without reading;
- a malformed or oversized review has no trustworthy uid to answer, so it gets HTTP 400 (413
  when oversized: the error's ``status``) with an RFC 9457 problem+json body (``check``,
  ``detail``, ``hint``, rendered by :mod:`kernel.problems`), which the API server treats as a
  webhook failure and, with ``failurePolicy: Fail``, denies;
- any other exception becomes a denial for the request's uid (HTTP 200, ``allowed: false``).

The routes catch admission errors themselves rather than leave them to the app's error handler:
a denial is an answer (HTTP 200), not an error, and every review, answered or refused, is
counted by outcome. Every denial is logged once (WARNING ``admission denied``: ``route``,
``check``, ``peer``, ``uid``, ``reason``; the request id comes from the logging setup): its
``check`` is the first check id the denial's message names (``…: image …: <check>: …``,
:func:`denied_check`), ``admission.denied`` when it names none.

Serving is ``umec webhook``'s job (:mod:`umec.webhook_process`): uvicorn over TLS with the
certificates of :mod:`admission.service.certs`, requiring the API server's client certificate.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any, Literal

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from admission.core.errors import AdmissionError
from admission.core.review import (
    ReviewMalformed,
    ReviewRequest,
    ReviewTooLarge,
    parse_review,
    review_response,
)
from admission.service.admit import Admitter, WebhookDeps
from admission.service.deps import Webhook
from kernel.errors import CheckedError
from kernel.metrics_access import metrics_refusal
from kernel.problems import checked_response, problem_response

__all__ = ["WebhookDeps", "WebhookNotReady", "create_webhook_app", "denied_check", "router"]

Endpoint = Literal["mutate", "validate"]
router = APIRouter(tags=["admission"])
log = logging.getLogger("umec.admission")
MAX_LOGGED_REASON = 512
# A check id in a denial's message: dotted lower-case words, at the start or after ": ", then ": ".
_CHECK_IN_MESSAGE = re.compile(r"(?:^|: )([a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)+): ")


def denied_check(message: str) -> str:
    """The first check id a denial's message names, ``admission.denied`` when none."""
    found = _CHECK_IN_MESSAGE.search(message[:4096])
    return found.group(1) if found else "admission.denied"


def _log_denial(request: Request, response: dict[str, Any]) -> None:
    message = str(response.get("status", {}).get("message", ""))
    log.warning("admission denied", extra={
        "route": request.url.path, "check": denied_check(message),
        "peer": request.client.host if request.client else "unknown",
        "uid": response.get("uid", ""), "reason": message[:MAX_LOGGED_REASON]})


def create_webhook_app(deps: WebhookDeps) -> FastAPI:
    """The webhook's app: ``deps`` on ``app.state.webhook``, :data:`router` included (the
    webhook is a process of its own, so its domain assembles the app; ``umec`` adds limits)."""
    app = FastAPI(title="µMEC admission webhook", docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.webhook = deps
    deps.admitter  # noqa: B018  (its caches exist from the start, not from the first review)
    app.include_router(router)
    return app


@router.post("/mutate")
async def mutate(request: Request, webhook: Webhook) -> Response:
    return await _review(request, webhook, "mutate")


@router.post("/validate")
async def validate(request: Request, webhook: Webhook) -> Response:
    return await _review(request, webhook, "validate")


@router.get("/healthz")
async def healthz(webhook: Webhook) -> dict[str, Any]:
    return {"status": "ok", "policy_generation": webhook.policies().generation}


class WebhookNotReady(CheckedError):
    """``GET /readyz``: the webhook cannot admit correctly yet (its policies are not loaded, or
    its database does not answer)."""

    check = "webhook.not_ready"
    status = 503
    hint = "Operators: see the webhook's log; it answers 200 once ready."


def _not_ready(webhook: WebhookDeps) -> WebhookNotReady | None:
    if not webhook.policies_loaded():
        return WebhookNotReady("the image policies are not loaded yet (the first list of "
                               "ImagePolicy and ClusterImagePolicy objects has not succeeded)",
                               check="webhook.policies_loading")
    if webhook.database_ping is not None:
        try:
            webhook.database_ping()
        except Exception as exc:  # not ready is an answer, not a crash
            return WebhookNotReady(f"the database does not answer ({type(exc).__name__})",
                                   check="database.reachable",
                                   hint="Operators: check the database and the webhook's log.")
    return None


@router.get("/readyz")
def readyz(request: Request, webhook: Webhook) -> Response:
    """Ready when the policies are loaded and the database (if any) answers: 200, else 503
    problem+json naming the check. For operators and monitoring over mTLS; the kubelet's
    probes cannot present a client certificate (deploy/webhook.yaml)."""
    refusal = _not_ready(webhook)
    if refusal is not None:
        return checked_response(refusal, request.url.path, request)
    return JSONResponse({"status": "ready",
                         "policy_generation": webhook.policies().generation})


@router.get("/metrics")
async def metrics(request: Request, webhook: Webhook) -> Response:
    refusal = metrics_refusal(request, webhook.metrics_token)
    if refusal is not None:
        return refusal
    return Response(webhook.metrics.render(), media_type="text/plain; version=0.0.4")


async def _review(request: Request, webhook: WebhookDeps, endpoint: Endpoint) -> Response:
    """Answer one review and count it: a problem (no uid to answer) is ``rejected``."""
    started = time.perf_counter()
    answer = await _answer(request, webhook, endpoint)
    metrics = webhook.metrics
    if isinstance(answer, Response):
        metrics.reviews.labels(endpoint, "rejected").inc()
        return answer
    allowed = bool(answer["response"]["allowed"])
    if not allowed:
        _log_denial(request, answer["response"])
    (metrics.admitted if allowed else metrics.denied).labels(endpoint).inc()
    metrics.reviews.labels(endpoint, "allowed" if allowed else "denied").inc()
    metrics.review_latency.labels(endpoint).observe(time.perf_counter() - started)
    return JSONResponse(answer)


async def _answer(request: Request, webhook: WebhookDeps,
                  endpoint: Endpoint) -> dict[str, Any] | Response:
    """The AdmissionReview answer, or a problem+json response when there is no uid to answer."""
    uid = ""
    try:
        req = parse_review(await _read_body(request, webhook.max_review_bytes),
                           webhook.max_review_bytes)
        uid = req.uid
        return await _admit(webhook.admitter, endpoint, req)
    except ReviewMalformed as e:  # no uid to deny: a problem with the error's status
        return checked_response(e, request.url.path, request)
    except AdmissionError as e:  # a denial is an answer (HTTP 200), not an error response
        return review_response(uid, allowed=False, message=f"{e.check}: {e.detail}")
    except Exception as e:  # fail closed without a stack trace in the answer
        if not uid:
            return _unreadable(request.url.path, e)
        return review_response(uid, allowed=False,
                               message=f"internal: {type(e).__name__} (denied)")


async def _admit(admitter: Admitter, endpoint: Endpoint, req: ReviewRequest) -> dict[str, Any]:
    if endpoint == "mutate":
        return await admitter.mutate(req)
    return await admitter.validate(req)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ReviewTooLarge(f"Content-Length {declared} > limit {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ReviewTooLarge(f"body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _unreadable(path: str, e: Exception) -> JSONResponse:
    """An unexpected failure before the review's uid was known: nothing to deny by uid (the
    API server only looks at the status; operators and ``kubectl`` read the body)."""
    return problem_response(path, 400, "review.failed",
                            "the review could not be read; nothing was admitted",
                            "Send an AdmissionReview v1 JSON body.", title="ReviewFailed",
                            extra={"error": type(e).__name__})
