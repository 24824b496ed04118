"""The contract for taking a snapshot, shared with the inference API.

The inference API classifies a camera frame server-side through ``SnapshotSource`` and these
errors alone, so it never depends on how cameras are opened (and never imports OpenCV capture).
Each error is a :class:`kernel.errors.CheckedError` with its ``check`` (``camera_configured``,
``camera_readable``), ``hint`` and HTTP ``status`` (404 unknown, 503 down or busy, with
``Retry-After``); a route lets it leave and the app's one handler answers it.
``str(error)`` reads ``check <check> failed: <detail>; <hint>``, like the inference errors.
"""

from __future__ import annotations

from typing import Protocol

from kernel.errors import CheckedError
from kernel.offload import in_thread


class SnapshotError(CheckedError):
    """A snapshot could not be taken; ``camera_id`` says which camera."""

    check = "camera_readable"
    hint = "retry later, and tell the node operator if it persists"
    status = 503
    problem_namespace = "urn:umec:camera:"

    def __init__(self, camera_id: str, detail: str) -> None:
        self.camera_id = camera_id
        super().__init__(detail)

    def message(self) -> str:
        return f"check {self.check} failed: {self.detail}; {self.hint}"

    def problem_detail(self) -> str:
        return str(self)


class UnknownCamera(SnapshotError):
    check = "camera_configured"
    hint = "list the cameras with GET /camera/v1/cameras"
    status = 404

    def __init__(self, camera_id: str) -> None:
        super().__init__(camera_id, f"no camera {camera_id!r} on this node")


class CameraUnavailable(SnapshotError):
    """The camera is configured but gave no frame (device missing, stream down, read failed)."""

    def __init__(self, camera_id: str, reason: str) -> None:
        super().__init__(camera_id, f"camera {camera_id!r} {reason}")
        self.reason = reason

    def problem_headers(self) -> dict[str, str]:
        return {"Retry-After": "5"}


class CameraBusy(CameraUnavailable):
    """Another reader held the camera for longer than the read timeout."""

    def __init__(self, camera_id: str, waited_s: float) -> None:
        super().__init__(camera_id, f"is busy with another reader (waited {waited_s:g} s)")


class CameraTimeout(CameraUnavailable):
    def __init__(self, camera_id: str, timeout_s: float) -> None:
        super().__init__(camera_id, f"gave no frame within {timeout_s:g} s")


class SnapshotSource(Protocol):
    """Takes one JPEG snapshot of a configured camera (blocking; call it off the event loop)."""

    def snapshot(self, camera_id: str) -> bytes: ...


async def snapshot_or_problem(source: SnapshotSource, camera_id: str) -> bytes:
    """One frame off the event loop; an unknown camera (404) or a failing one (503) leaves as
    its :class:`SnapshotError`, which the app's handler answers as problem+json."""
    return await in_thread(source.snapshot, camera_id)
