"""Camera sources configured per node, read with OpenCV into JPEG snapshots.

Kinds: ``v4l2`` (``/dev/videoN``), ``rtsp`` and ``http`` (an MJPEG ``multipart/x-mixed-replace``
stream, or anything else FFmpeg reads from a URL), and ``file`` (a video file, looped at its end).

Resources: one capture per camera, opened on first use; one reader at a time (a lock per
camera, waited on for at most the read timeout); every read runs on the camera's own worker
thread and is abandoned after ``read_timeout_s`` (the capture is then released when the read
returns, so a wedged device never leaks a handle or blocks a request thread). Live sources are
opened per snapshot unless ``keep_open`` says otherwise, so a snapshot is never a frame that sat
in OpenCV's buffer; a file stays open so successive snapshots advance through the video.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Protocol

import cv2
import numpy as np

from mec_api.camera.config import CameraConfig
from mec_api.camera.snapshots import (
    CameraBusy,
    CameraTimeout,
    CameraUnavailable,
    SnapshotError,
    UnknownCamera,
)

log = logging.getLogger(__name__)

class Capture(Protocol):
    """The part of ``cv2.VideoCapture`` a camera uses."""

    def isOpened(self) -> bool: ...
    def read(self) -> tuple[bool, Any]: ...
    def set(self, prop: int, value: float) -> bool: ...
    def release(self) -> None: ...


def open_capture(config: CameraConfig) -> Capture:
    """Open an OpenCV capture for ``config``; raises ``CameraUnavailable`` if it cannot."""
    timeout_ms = int(config.read_timeout_s * 1000)
    if config.kind in ("v4l2", "file") and not os.path.exists(config.location):
        what = "device" if config.kind == "v4l2" else "video file"
        raise CameraUnavailable(config.id, f"has no {what} at its configured location")
    params: list[int] = []
    if config.kind == "v4l2":
        api = cv2.CAP_V4L2
        if config.width and config.height:
            params += [cv2.CAP_PROP_FRAME_WIDTH, config.width]
            params += [cv2.CAP_PROP_FRAME_HEIGHT, config.height]
    else:
        api = cv2.CAP_FFMPEG
        # FFmpeg honours both: a dead stream fails inside OpenCV instead of hanging the worker.
        params += [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms]
        params += [cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
    capture = cv2.VideoCapture(config.location, api, params)
    if not capture.isOpened():
        capture.release()
        raise CameraUnavailable(config.id, f"could not be opened ({config.kind})")
    if config.kind != "file":
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # keep-open live sources: as fresh as allowed
    return capture


def encode_jpeg(frame: np.ndarray, config: CameraConfig) -> bytes:
    """Scale the BGR frame to the configured size (aspect kept when one side is given) and
    encode it as JPEG."""
    height, width = frame.shape[:2]
    target_w, target_h = config.width, config.height
    if target_w and not target_h:
        target_h = max(1, round(height * target_w / width))
    elif target_h and not target_w:
        target_w = max(1, round(width * target_h / height))
    if target_w and target_h and (target_w, target_h) != (width, height):
        shrinking = target_w * target_h < width * height
        frame = cv2.resize(
            frame,
            (target_w, target_h),
            interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR,
        )
    ok, buffer = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, config.jpeg_quality])
    if not ok:
        raise CameraUnavailable(config.id, "gave a frame that could not be encoded as JPEG")
    return bytes(buffer.tobytes())


class Camera:
    """One configured camera: serialised, time-bounded JPEG snapshots."""

    def __init__(
        self, config: CameraConfig, opener: Callable[[CameraConfig], Capture] = open_capture
    ) -> None:
        self.config = config
        self._opener = opener
        self._lock = threading.Lock()  # held from submit until the read returns
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"camera-{config.id}")
        self._capture: Capture | None = None
        self._abandoned = False  # the last read timed out: drop its capture when it returns

    def snapshot(self) -> bytes:
        timeout = self.config.read_timeout_s
        if not self._lock.acquire(timeout=timeout):
            raise CameraBusy(self.config.id, timeout)
        try:
            future: Future[bytes] = self._worker.submit(self._read_jpeg)
        except RuntimeError:  # the worker was shut down: the camera set is closing
            self._lock.release()
            raise CameraUnavailable(self.config.id, "is shutting down") from None
        future.add_done_callback(lambda _: self._lock.release())
        try:
            return future.result(timeout=timeout)
        except FutureTimeout:
            self._abandoned = True
            log.warning("camera %s: no frame within %.1f s", self.config.id, timeout)
            raise CameraTimeout(self.config.id, timeout) from None

    def _read_jpeg(self) -> bytes:
        try:
            capture = self._capture or self._opener(self.config)
            self._capture = capture
            ok, frame = capture.read()
            if not ok and self.config.kind == "file":
                capture.set(cv2.CAP_PROP_POS_FRAMES, 0)  # end of the video: loop
                ok, frame = capture.read()
            if not ok or frame is None:
                raise CameraUnavailable(self.config.id, "gave no frame (read failed)")
            jpeg = encode_jpeg(frame, self.config)
        except Exception:
            self._drop_capture()
            raise
        if self._abandoned or not self.config.stays_open:
            self._drop_capture()
        return jpeg

    def _drop_capture(self) -> None:
        self._abandoned = False
        if self._capture is not None:
            self._capture.release()
            self._capture = None

    def close(self) -> None:
        """Release the capture (after any read in flight) and stop the worker; idempotent."""
        try:
            self._worker.submit(self._drop_capture)
        except RuntimeError:  # already closed
            return
        self._worker.shutdown(wait=False)


class Cameras:
    """The cameras of this node by id; a ``SnapshotSource`` for the inference API."""

    def __init__(
        self,
        configs: Iterable[CameraConfig],
        opener: Callable[[CameraConfig], Capture] = open_capture,
    ) -> None:
        self._cameras: dict[str, Camera] = {}
        for config in configs:
            if config.id in self._cameras:
                raise ValueError(f"camera id {config.id!r} is configured twice")
            self._cameras[config.id] = Camera(config, opener)

    def configs(self) -> list[CameraConfig]:
        return [camera.config for camera in self._cameras.values()]

    def snapshot(self, camera_id: str) -> bytes:
        camera = self._cameras.get(camera_id)
        if camera is None:
            raise UnknownCamera(camera_id)
        try:
            return camera.snapshot()
        except SnapshotError:
            raise
        except Exception as exc:  # OpenCV raises cv2.error and others: never leak them
            log.exception("camera %s: snapshot failed", camera_id)
            raise CameraUnavailable(camera_id, "failed while reading a frame") from exc

    def close(self) -> None:
        for camera in self._cameras.values():
            camera.close()
