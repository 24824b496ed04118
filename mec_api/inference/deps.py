"""What the inference routes need, as ``app.state.inference``, and their typed dependencies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Protocol

import anyio
from fastapi import Depends, Request

from mec_api import scopes
from mec_api.camera.snapshots import SnapshotSource
from mec_api.deps import app_state, requires
from mec_api.inference.image import ImageLimits
from mec_api.inference.model import ModelInfo
from mec_api.inference.scoring import Prediction
from mec_api.principal import Principal
from mec_api.problems import ProblemError


class ImageClassifier(Protocol):
    info: ModelInfo
    limits: ImageLimits

    def classify(
        self, image: bytes, top: int = 5, declared_type: str | None = None
    ) -> list[Prediction]: ...


class ClassificationSlots:
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


@dataclass(frozen=True)
class InferenceContext:
    """The classifier, the cameras it may classify server-side (None: none on this node) and
    the bound on concurrent classifications."""

    classifier: ImageClassifier
    snapshots: SnapshotSource | None
    slots: ClassificationSlots

    @classmethod
    def create(cls, classifier: ImageClassifier, snapshots: SnapshotSource | None, *,
               max_concurrency: int = 2, max_waiting: int = 8) -> InferenceContext:
        return cls(classifier, snapshots, ClassificationSlots(max_concurrency, max_waiting))


async def inference_context(request: Request) -> InferenceContext:
    return app_state(request, "inference", InferenceContext)


Inference = Annotated[InferenceContext, Depends(inference_context)]
Classifier = Annotated[Principal, Depends(requires(scopes.INFERENCE_CLASSIFY))]
