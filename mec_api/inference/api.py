"""Inference API ``/inference/v1``: list models, classify an image, classify a camera frame.

* ``POST /models/{model}/classify?top_k=5`` takes the image as the raw request body with
  ``Content-Type: image/jpeg`` or ``image/png`` (no multipart: one less parser on the edge, and
  the body can be refused while it streams once it passes the byte limit).
* ``POST /models/{model}/classify-camera/{camera_id}?top_k=5`` takes the snapshot on the node
  and classifies it there: the app receives labels, never the frame. It needs only
  ``inference.classify``, not ``camera.snapshot``: an app that may see labels but not pictures is
  exactly the case this route exists for. An operator who considers even the labels of a camera
  sensitive does not grant ``inference.classify`` to that app.

Inference runs off the event loop in worker threads, at most ``max_concurrency`` at once; when
``max_waiting`` more are already queued the API answers 503 with ``Retry-After`` instead of
queueing without bound. Errors are problem+json: unsupported type 415, too many bytes 413,
unreadable or oversized image 422, unknown model or camera 404, camera down or busy 503.
"""

from __future__ import annotations

import logging
from typing import Annotated, Protocol

import anyio
from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel

from mec_api import scopes
from mec_api.camera.snapshots import SnapshotSource, snapshot_or_problem
from mec_api.inference.errors import (
    ContentTypeMismatch,
    ImageRejected,
    ImageTooManyBytes,
    UnsupportedImageFormat,
)
from mec_api.inference.image import MEDIA_TYPES, ImageLimits
from mec_api.inference.model import ModelInfo
from mec_api.inference.scoring import MAX_TOP_K, Prediction
from mec_api.principal import Principal, RouteGuard
from mec_api.problems import ProblemError

log = logging.getLogger(__name__)

TopK = Annotated[int, Query(ge=1, le=MAX_TOP_K, description="how many classes to return")]
ModelName = Annotated[str, Path(max_length=64)]
CameraId = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]


class ImageClassifier(Protocol):
    info: ModelInfo
    limits: ImageLimits

    def classify(
        self, image: bytes, top: int = 5, declared_type: str | None = None
    ) -> list[Prediction]: ...


class ModelView(BaseModel):
    name: str
    description: str
    input_size: int
    classes: int
    media_types: list[str]
    weights_sha256: str


class ModelList(BaseModel):
    models: list[ModelView]


class PredictionView(BaseModel):
    index: int
    label: str
    score: float


class Classification(BaseModel):
    model: str
    predictions: list[PredictionView]
    camera_id: str | None = None


class _Admission:
    """At most ``running`` classifications at once and ``waiting`` more queued behind them."""

    def __init__(self, running: int, waiting: int) -> None:
        self.limiter = anyio.CapacityLimiter(running)
        self.capacity = running + waiting
        self.in_flight = 0  # only touched on the event loop, so no lock

    async def run(
        self, classifier: ImageClassifier, image: bytes, top: int, declared: str | None
    ) -> list[Prediction]:
        if self.in_flight >= self.capacity:
            raise ProblemError(
                503,
                "Service Unavailable",
                "the classifier is busy with other images; retry shortly",
                headers={"Retry-After": "1"},
            )
        self.in_flight += 1
        try:
            return await anyio.to_thread.run_sync(
                classifier.classify, image, top, declared, limiter=self.limiter
            )
        finally:
            self.in_flight -= 1


def _image_problem(exc: ImageRejected) -> ProblemError:
    if isinstance(exc, UnsupportedImageFormat | ContentTypeMismatch):
        return ProblemError(415, "Unsupported Media Type", str(exc))
    if isinstance(exc, ImageTooManyBytes):
        return ProblemError(413, "Payload Too Large", str(exc))
    return ProblemError(422, "Unprocessable Entity", str(exc))


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _image_problem(ImageTooManyBytes(int(declared), limit))
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _image_problem(ImageTooManyBytes(size, limit))
        chunks.append(chunk)
    return b"".join(chunks)


def build_inference_router(
    classifier: ImageClassifier,
    snapshots: SnapshotSource | None,
    guard: RouteGuard,
    *,
    max_concurrency: int = 2,
    max_waiting: int = 8,
) -> APIRouter:
    router = APIRouter(prefix="/inference/v1", tags=["inference"])
    may_classify = Depends(guard.require(scopes.INFERENCE_CLASSIFY))
    admission = _Admission(max_concurrency, max_waiting)
    info = classifier.info

    def check_model(model: str) -> None:
        if model != info.name:
            raise ProblemError(
                404,
                "Not Found",
                f"no model {model!r}; list the models with GET /inference/v1/models",
            )

    async def classify(
        image: bytes, top: int, declared: str | None, camera_id: str | None
    ) -> Classification:
        try:
            predictions = await admission.run(classifier, image, top, declared)
        except ImageRejected as exc:
            raise _image_problem(exc) from None
        except ProblemError:
            raise
        except Exception:  # a runtime failure inside ONNX Runtime or OpenCV: no trace to clients
            log.exception("inference failed")
            raise ProblemError(
                500, "Internal Server Error", "the classifier failed on this image; retry later"
            ) from None
        return Classification(
            model=info.name,
            predictions=[
                PredictionView(index=p.index, label=p.label, score=p.score) for p in predictions
            ],
            camera_id=camera_id,
        )

    @router.get("/models", response_model=ModelList)
    async def list_models(principal: Principal = may_classify) -> ModelList:
        return ModelList(
            models=[
                ModelView(
                    name=info.name,
                    description=info.description,
                    input_size=info.input_size,
                    classes=info.classes,
                    media_types=list(info.media_types),
                    weights_sha256=info.weights_sha256,
                )
            ]
        )

    @router.post(
        "/models/{model}/classify",
        response_model=Classification,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    media: {"schema": {"type": "string", "format": "binary"}}
                    for media in MEDIA_TYPES
                },
            }
        },
    )
    async def classify_upload(
        model: ModelName, request: Request, top_k: TopK = 5, principal: Principal = may_classify
    ) -> Classification:
        check_model(model)
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type not in MEDIA_TYPES:
            raise ProblemError(
                415,
                "Unsupported Media Type",
                f"check content_type failed: {media_type or 'no Content-Type'} is not accepted; "
                "send the image as the body with Content-Type image/jpeg or image/png",
            )
        image = await _read_body(request, classifier.limits.max_bytes)
        return await classify(image, top_k, media_type, None)

    @router.post("/models/{model}/classify-camera/{camera_id}", response_model=Classification)
    async def classify_camera(
        model: ModelName, camera_id: CameraId, top_k: TopK = 5, principal: Principal = may_classify
    ) -> Classification:
        check_model(model)
        if snapshots is None:
            raise ProblemError(404, "Not Found", "this node serves no cameras to classify")
        frame = await snapshot_or_problem(snapshots, camera_id)
        return await classify(frame, top_k, None, camera_id)

    return router
