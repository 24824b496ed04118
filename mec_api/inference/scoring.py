"""Pure core: logits -> the top-k ImageNet labels with softmax scores."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import numpy as np
import numpy.typing as npt

IMAGENET_CLASS_COUNT = 1000
MAX_TOP_K = 20


@dataclass(frozen=True)
class Prediction:
    """One class: its ImageNet index (0-999), its name and its softmax probability."""

    index: int
    label: str
    score: float


def load_imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in index order, from the file shipped with this package.

    Line N (0-based) names class N. The names are the first WordNet lemma of each synset, as in
    the lists shipped with Keras and PyTorch Hub, so two names repeat: "crane" (134, the bird;
    517, the machine) and "maillot" (638, 639). Clients that need to tell them apart use the index.
    """
    text = resources.files("mec_api.inference").joinpath("imagenet_classes.txt").read_text("utf-8")
    labels = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(labels) != IMAGENET_CLASS_COUNT:
        raise ValueError(f"imagenet_classes.txt has {len(labels)} names, expected 1000")
    return labels


def softmax(logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    shifted = logits.astype(np.float64) - float(np.max(logits))  # no overflow for large logits
    exp = np.exp(shifted)
    result: npt.NDArray[np.float64] = exp / exp.sum()
    return result


def top_k(logits: npt.NDArray[np.float32], labels: tuple[str, ...], k: int) -> list[Prediction]:
    """The ``k`` most probable classes, best first; ties keep the lower index first."""
    if logits.ndim != 1 or logits.shape[0] != len(labels):
        raise ValueError(f"expected {len(labels)} logits, got shape {logits.shape}")
    if not 1 <= k <= min(MAX_TOP_K, len(labels)):
        raise ValueError(f"top_k must be between 1 and {min(MAX_TOP_K, len(labels))}, got {k}")
    probabilities = softmax(logits)
    # Order by logits, not probabilities: softmax is monotonic, but far-behind classes all
    # underflow to probability 0 and would then tie.
    order = np.argsort(-logits.astype(np.float64), kind="stable")[:k]
    return [Prediction(int(i), labels[int(i)], float(probabilities[i])) for i in order]
