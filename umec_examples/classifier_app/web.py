"""The page and its one action, as a FastAPI app (``create_app``).

- ``GET /``: the page; the camera and model names are escaped, the script and style are files
  (``/static/``), the CSP allows nothing else (no inline script, no eval, no other origin).
- ``POST /api/classify``: take a picture, classify it, answer label, score, the runners-up and
  the picture (a ``data:`` JPEG). It needs the header ``X-Classifier-App: 1``, which a
  cross-site form cannot send (403 ``app.csrf``). Refusals are problem+json with ``check``,
  ``detail`` and ``hint``; an unexpected failure is 500 ``app.internal``, never a trace.
- ``GET /healthz``: liveness.

No answer carries the platform's token: it stays in ``Platform``.
"""

from __future__ import annotations

import base64
import html
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse

from umec_examples.classifier_app.config import AppConfig
from umec_examples.classifier_app.errors import AppError
from umec_examples.classifier_app.upstream import Platform

log = logging.getLogger("classifier_app")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; "
       "require-trusted-types-for 'script'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
                    "Cross-Origin-Opener-Policy": "same-origin", "Cache-Control": "no-store"}
CSRF_HEADER = "x-classifier-app"
STATIC = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>What does the site camera see?</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/app.css">
<script src="/static/app.js" defer></script>
</head>
<body>
<main>
<h1>What does the site camera see?</h1>
<p class="where">Camera <code id="camera">{camera}</code>, model <code id="model">{model}</code>.
The picture is taken and classified at the site; this page never holds a platform token.</p>
<button id="shoot" type="button">Take a picture and classify it</button>
<p id="status" role="status"></p>
<section id="result" hidden>
<p class="answer"><span id="label"></span> <span id="score"></span></p>
<img id="picture" alt="the camera's picture">
<ol id="others"></ol>
</section>
<section id="problem" role="alert" hidden>
<p><strong id="problem-check"></strong> <span id="problem-detail"></span></p>
<p>What to do: <span id="problem-hint"></span></p>
</section>
</main>
</body>
</html>
"""


def render_page(config: AppConfig) -> str:
    return PAGE.format(camera=html.escape(config.camera), model=html.escape(config.model))


def problem(error: AppError) -> JSONResponse:
    return JSONResponse(error.as_problem(), status_code=error.status,
                        media_type="application/problem+json")


def create_app(config: AppConfig, platform: Platform | None = None) -> FastAPI:
    held = platform or Platform(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await held.aclose()

    app = FastAPI(title="µMEC sample app: site-camera classifier", lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.platform = held
    assets = {name: (files(__package__) / "static" / name).read_bytes() for name in STATIC}

    @app.middleware("http")
    async def headers(request: Request,
                      call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        try:
            response = await call_next(request)
        except Exception:  # never a trace to the browser
            log.exception("unexpected failure")
            response = problem(AppError(500, "app.internal", "the app failed unexpectedly",
                                        "retry; if it persists, read the app's log"))
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.exception_handler(AppError)
    async def refused(request: Request, exc: AppError) -> JSONResponse:
        log.warning("refused", extra={"check": exc.check, "detail": exc.detail})
        return problem(exc)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(render_page(config))

    @app.get("/static/{name}")
    async def static(name: str) -> Response:
        if name not in assets:
            raise AppError(404, "app.not_found", "no such file", "open / instead")
        return Response(assets[name], media_type=STATIC[name])

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/api/classify")
    async def classify(request: Request) -> dict[str, Any]:
        check_csrf(request)
        jpeg = await held.picture()
        predictions = await held.classify(jpeg)
        return {"camera": config.camera, "model": config.model,
                "label": predictions[0].label, "score": round(predictions[0].score, 4),
                "others": [{"label": p.label, "score": round(p.score, 4)}
                           for p in predictions[1:]],
                "picture": "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()}

    return app


def check_csrf(request: Request) -> None:
    """The action needs the page's own header; a cross-site form or image cannot set it, and a
    cross-site fetch that sets it is refused by the browser before it is sent (no CORS here)."""
    if request.headers.get(CSRF_HEADER) != "1":
        raise AppError(403, "app.csrf", "this action needs the page's X-Classifier-App header",
                       "use the button on the app's page")
