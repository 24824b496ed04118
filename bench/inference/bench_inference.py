"""Inference latency per image and process memory with the model loaded.

Run from the repository root::

    .venv/bin/python bench/inference/bench_inference.py [--runs 200] [--threads 2]
        [--cache-dir DIR]    # reuse an export; default: a fresh temp dir, so the export is timed

1. **Export** (only when the cache has no graph): ``python -m mec_api.inference.export`` in its
   own process, wall time including the torch import.
2. **Latency**, in a fresh interpreter that imports only the serving path (ONNX Runtime, OpenCV,
   numpy; no torch, no scikit-image): for each photo (scikit-image's coffee and chelsea, encoded
   as JPEG q95 and PNG by the parent) ``OnnxImageClassifier.classify`` end to end (decode,
   checks, resize/crop, ONNX Runtime, softmax top-5), and separately the ONNX Runtime call
   alone. ``--runs`` timed calls after 10 warm-up calls; median, p99 and min.
3. **Memory** of that process from ``/proc/self/status``: VmRSS after the imports, VmRSS after
   the model is loaded, and VmHWM (peak RSS) at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def percentile(sorted_ms: list[float], q: float) -> float:
    index = min(len(sorted_ms) - 1, max(0, round(q / 100 * (len(sorted_ms) - 1))))
    return sorted_ms[index]


def summarise(samples_ns: list[int]) -> dict[str, float]:
    ms = sorted(s / 1e6 for s in samples_ns)
    return {"median": percentile(ms, 50), "p99": percentile(ms, 99), "min": ms[0]}


def measure(cache_dir: Path, images_dir: Path, runs: int, threads: int) -> dict[str, Any]:
    """The child: serving imports only, then timings and memory."""
    sys.path.insert(0, str(ROOT))
    from mec_api.inference.image import ImageLimits, decode_rgb, to_input_tensor
    from mec_api.inference.model import OnnxImageClassifier

    rss_imports = status_kib("VmRSS")
    classifier = OnnxImageClassifier.from_cache(cache_dir, threads=threads)
    rss_loaded = status_kib("VmRSS")
    results: dict[str, Any] = {"rows": []}
    for path in sorted(images_dir.iterdir()):
        image = path.read_bytes()
        for _ in range(10):
            classifier.classify(image)
        total: list[int] = []
        for _ in range(runs):
            started = time.perf_counter_ns()
            top = classifier.classify(image, 5)
            total.append(time.perf_counter_ns() - started)
        tensor = to_input_tensor(decode_rgb(image, ImageLimits()))
        session: list[int] = []
        for _ in range(runs):
            started = time.perf_counter_ns()
            classifier.logits(tensor)
            session.append(time.perf_counter_ns() - started)
        results["rows"].append(
            {
                "image": path.name,
                "bytes": len(image),
                "top1": f"{top[0].label} ({top[0].score:.2f})",
                "classify": summarise(total),
                "onnxruntime": summarise(session),
            }
        )
    results["rss_imports_kib"] = rss_imports
    results["rss_loaded_kib"] = rss_loaded
    results["hwm_kib"] = status_kib("VmHWM")
    return results


def prepare_images(target: Path) -> None:
    import cv2
    from skimage import data as photos

    coffee, chelsea = photos.coffee(), photos.chelsea()  # type: ignore[no-untyped-call]
    for name, rgb in (("coffee", coffee), ("chelsea", chelsea)):
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        h, w = rgb.shape[:2]
        for ext, params in ((".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95]), (".png", [])):
            ok, buf = cv2.imencode(ext, bgr, params)
            assert ok
            (target / f"{name}-{w}x{h}{ext}").write_bytes(buf.tobytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--child", nargs=2, metavar=("CACHE", "IMAGES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        cache, images = map(Path, args.child)
        print(json.dumps(measure(cache, images, args.runs, args.threads)))
        return

    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        cache_dir = args.cache_dir or Path(tmp) / "cache"
        images = Path(tmp) / "images"
        images.mkdir()
        prepare_images(images)
        was_cached = any(cache_dir.glob("*.json"))
        started = time.perf_counter()
        export = subprocess.run(
            [sys.executable, "-m", "mec_api.inference.export", "--cache-dir", str(cache_dir)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        export_wall = time.perf_counter() - started
        exported = json.loads(export.stdout[export.stdout.index("{") :])
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--runs",
                str(args.runs),
                "--threads",
                str(args.threads),
                "--child",
                str(cache_dir),
                str(images),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        result = json.loads(child.stdout.strip().splitlines()[-1])

    import onnxruntime

    command = " ".join(["bench/inference/bench_inference.py", *sys.argv[1:]])
    print(f"command: .venv/bin/python {command}")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, "
        f"onnxruntime {onnxruntime.__version__}, {args.threads} intra-op threads, "
        f"{args.runs} runs per image after 10 warm-up"
    )
    print(
        f"export: {exported['export_seconds']:.1f} s inside the exporter, {exported['exporter']}; "
        + (
            f"this run found it cached ({export_wall:.1f} s to hash and check the files)\n"
            if was_cached
            else f"{export_wall:.1f} s wall with the interpreter and torch import\n"
        )
    )
    print(
        "| image | bytes | top-1 | classify median ms | p99 ms | min ms "
        "| ORT median ms | ORT p99 ms |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for row in result["rows"]:
        c, o = row["classify"], row["onnxruntime"]
        print(
            f"| {row['image']} | {row['bytes']} | {row['top1']} | {c['median']:.2f} | "
            f"{c['p99']:.2f} | {c['min']:.2f} | {o['median']:.2f} | {o['p99']:.2f} |"
        )
    mib = 1024
    print(
        "\nmemory (serving process, no torch): "
        f"RSS after imports {result['rss_imports_kib'] / mib:.1f} MiB, "
        f"after loading the model {result['rss_loaded_kib'] / mib:.1f} MiB, "
        f"peak (VmHWM) {result['hwm_kib'] / mib:.1f} MiB"
    )


if __name__ == "__main__":
    main()
