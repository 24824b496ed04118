"""The admission webhook's HTTP layer: the module-level :data:`router` and
:func:`create_webhook_app`, which puts the :class:`WebhookDeps` on ``app.state.webhook`` and
includes the router. Routes read the deps through :data:`admission.service.deps.Webhook`.

Routes: ``POST /mutate`` and ``POST /validate`` (AdmissionReview v1 in and out, flow in
:mod:`admission.service.admit`), ``GET /healthz``, ``GET /metrics`` (Prometheus text, for the
metrics token, or a loopback peer when none is set: :mod:`kernel.metrics_access`).

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
counted by outcome.

Serving is ``umec webhook``'s job (:mod:`umec.webhook_process`): uvicorn over TLS with the
certificates of :mod:`admission.service.certs`, requiring the API server's client certificate.
"""

from __future__ import annotations

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
from kernel.metrics_access import metrics_refusal
from kernel.problems import checked_response, problem_response

__all__ = ["WebhookDeps", "create_webhook_app", "router"]

Endpoint = Literal["mutate", "validate"]
router = APIRouter(tags=["admission"])


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
        return checked_response(e, request.url.path)
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
