"""The admission webhook's HTTP surface: ``create_webhook_app(deps)`` (FastAPI).

Routes: ``POST /mutate`` and ``POST /validate`` (AdmissionReview v1 in and out, flow in
:mod:`admission.service.admit`), ``GET /healthz``, ``GET /metrics`` (Prometheus text).

Request handling fails closed and never leaks a stack trace:
- the body is read in chunks and refused once it passes the size limit (3 MiB by default, the
  API server's own limit), before any JSON decoding; a declared Content-Length over the limit
  is refused without reading;
- a malformed or oversized review has no trustworthy uid to answer, so it gets HTTP 400 (413
  when oversized) with an RFC 7807 problem+json body (``check``, ``detail``, ``hint``), which
  the API server treats as a webhook failure and, with ``failurePolicy: Fail``, denies;
- any other exception becomes a denial for the request's uid (HTTP 200, ``allowed: false``).

Serving over TLS is uvicorn's job (``ssl_certfile``/``ssl_keyfile`` from
:mod:`admission.service.certs`);
:func:`serve_webhook` is the small wrapper ``umec webhook`` can call.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from admission.core.errors import AdmissionError
from admission.core.review import ReviewMalformed, ReviewTooLarge, parse_review, review_response
from admission.service.admit import Admitter, WebhookDeps

__all__ = ["WebhookDeps", "create_webhook_app", "serve_webhook"]


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


def _error(e: AdmissionError, status: int = 400) -> JSONResponse:
    """A review too malformed to answer: RFC 7807 problem+json (the API server only looks at
    the status; operators and ``kubectl`` read the body)."""
    return JSONResponse({"type": f"urn:umec:{e.check}", "title": type(e).__name__,
                         "status": status, **e.as_dict()},
                        status_code=status, media_type="application/problem+json")


def create_webhook_app(deps: WebhookDeps) -> FastAPI:
    app = FastAPI(title="µMEC admission webhook", docs_url=None, redoc_url=None,
                  openapi_url=None)
    admitter = Admitter(deps)
    app.state.admitter = admitter
    metrics = deps.metrics

    async def handle(request: Request, endpoint: str) -> Response:
        started = time.perf_counter()
        uid = ""
        try:
            body = await _read_body(request, deps.max_review_bytes)
            req = parse_review(body, deps.max_review_bytes)
            uid = req.uid
            if endpoint == "mutate":
                answer = await admitter.mutate(req)
            else:
                answer = await admitter.validate(req)
        except ReviewTooLarge as e:
            metrics.reviews.labels(endpoint, "rejected").inc()
            return _error(e, 413)
        except ReviewMalformed as e:
            metrics.reviews.labels(endpoint, "rejected").inc()
            return _error(e)
        except AdmissionError as e:
            answer = review_response(uid, allowed=False, message=f"{e.check}: {e.detail}")
        except Exception as e:  # fail closed without a stack trace in the answer
            if not uid:
                metrics.reviews.labels(endpoint, "rejected").inc()
                return JSONResponse(
                    {"type": "urn:umec:review.failed", "title": "ReviewFailed", "status": 400,
                     "check": "review.failed", "error": type(e).__name__,
                     "detail": "the review could not be read; nothing was admitted",
                     "hint": "Send an AdmissionReview v1 JSON body."},
                    status_code=400, media_type="application/problem+json")
            answer = review_response(uid, allowed=False,
                                     message=f"internal: {type(e).__name__} (denied)")
        allowed = bool(answer["response"]["allowed"])
        (metrics.admitted if allowed else metrics.denied).labels(endpoint).inc()
        metrics.reviews.labels(endpoint, "allowed" if allowed else "denied").inc()
        metrics.review_latency.labels(endpoint).observe(time.perf_counter() - started)
        return JSONResponse(answer)

    @app.post("/mutate")
    async def mutate(request: Request) -> Response:
        return await handle(request, "mutate")

    @app.post("/validate")
    async def validate(request: Request) -> Response:
        return await handle(request, "validate")

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "policy_generation": deps.policies().generation}

    @app.get("/metrics")
    async def metrics_route() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    return app


def serve_webhook(deps: WebhookDeps, *, cert_file: str, key_file: str,
                  host: str = "0.0.0.0", port: int = 8443) -> None:
    """Run the webhook over HTTPS (blocking): what ``umec webhook`` calls."""
    import uvicorn

    uvicorn.run(create_webhook_app(deps), host=host, port=port, ssl_certfile=cert_file,
                ssl_keyfile=key_file, log_level="warning", access_log=False)
