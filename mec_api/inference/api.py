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
unreadable or oversized image 422, unknown model or camera 404, camera down or busy 503. Each is
a checked error carrying its status (:mod:`mec_api.inference.errors`,
:mod:`mec_api.camera.snapshots`), raised out of the route to the app's one handler.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel

from mec_api.camera.snapshots import snapshot_or_problem
from mec_api.inference.deps import Classifier, Inference, InferenceContext
from mec_api.inference.errors import ContentTypeNotAccepted, ImageRejected, ImageTooManyBytes
from mec_api.inference.image import MEDIA_TYPES
from mec_api.inference.scoring import MAX_TOP_K
from mec_api.problems import ProblemError, ProblemRoute

log = logging.getLogger(__name__)

TopK = Annotated[int, Query(ge=1, le=MAX_TOP_K, description="how many classes to return")]
ModelName = Annotated[str, Path(max_length=64)]
CameraId = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
router = APIRouter(prefix="/inference/v1", tags=["inference"], route_class=ProblemRoute)
IMAGE_BODY = {"requestBody": {"required": True, "content": {
    media: {"schema": {"type": "string", "format": "binary"}} for media in MEDIA_TYPES}}}


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


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ImageTooManyBytes(int(declared), limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ImageTooManyBytes(size, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _check_model(ctx: InferenceContext, model: str) -> None:
    if model != ctx.classifier.info.name:
        raise ProblemError(
            404,
            "Not Found",
            f"no model {model!r}; list the models with GET /inference/v1/models",
        )


async def _classify(
    ctx: InferenceContext, image: bytes, top: int, declared: str | None, camera_id: str | None
) -> Classification:
    try:
        predictions = await ctx.slots.run(ctx.classifier, image, top, declared)
    except (ImageRejected, ProblemError):  # the image's fault, or busy: their own status
        raise
    except Exception:  # a runtime failure inside ONNX Runtime or OpenCV: no trace to clients
        log.exception("inference failed")
        raise ProblemError(
            500, "Internal Server Error", "the classifier failed on this image; retry later"
        ) from None
    return Classification(
        model=ctx.classifier.info.name,
        predictions=[
            PredictionView(index=p.index, label=p.label, score=p.score) for p in predictions
        ],
        camera_id=camera_id,
    )


@router.get("/models", response_model=ModelList)
async def list_models(principal: Classifier, ctx: Inference) -> ModelList:
    info = ctx.classifier.info
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


@router.post("/models/{model}/classify", response_model=Classification,
             openapi_extra=IMAGE_BODY)
async def classify_upload(
    model: ModelName, request: Request, principal: Classifier, ctx: Inference, top_k: TopK = 5
) -> Classification:
    _check_model(ctx, model)
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in MEDIA_TYPES:
        raise ContentTypeNotAccepted(media_type, tuple(MEDIA_TYPES))
    image = await _read_body(request, ctx.classifier.limits.max_bytes)
    return await _classify(ctx, image, top_k, media_type, None)


@router.post("/models/{model}/classify-camera/{camera_id}", response_model=Classification)
async def classify_camera(
    model: ModelName, camera_id: CameraId, principal: Classifier, ctx: Inference,
    top_k: TopK = 5
) -> Classification:
    _check_model(ctx, model)
    if ctx.snapshots is None:
        raise ProblemError(404, "Not Found", "this node serves no cameras to classify")
    frame = await snapshot_or_problem(ctx.snapshots, camera_id)
    return await _classify(ctx, frame, top_k, None, camera_id)
