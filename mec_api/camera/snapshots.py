"""The contract for taking a snapshot, shared with the inference API.

The inference API classifies a camera frame server-side through ``SnapshotSource`` and these
errors alone, so it never depends on how cameras are opened (and never imports OpenCV capture).
"""

from __future__ import annotations

from typing import Protocol


class SnapshotError(Exception):
    """A snapshot could not be taken; ``camera_id`` says which camera."""

    def __init__(self, camera_id: str, message: str) -> None:
        super().__init__(message)
        self.camera_id = camera_id


class UnknownCamera(SnapshotError):
    def __init__(self, camera_id: str) -> None:
        super().__init__(
            camera_id,
            f"check camera_configured failed: no camera {camera_id!r} on this node; "
            "list the cameras with GET /camera/v1/cameras",
        )


class CameraUnavailable(SnapshotError):
    """The camera is configured but gave no frame (device missing, stream down, read failed)."""

    def __init__(self, camera_id: str, reason: str) -> None:
        super().__init__(
            camera_id,
            f"check camera_readable failed: camera {camera_id!r} {reason}; "
            "retry later, and tell the node operator if it persists",
        )
        self.reason = reason


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
    """One frame off the event loop; an unknown camera is 404, a failing one 503 (problem+json)."""
    import anyio

    from mec_api.problems import ProblemError
    try:
        return await anyio.to_thread.run_sync(source.snapshot, camera_id)
    except UnknownCamera as exc:
        raise ProblemError(404, "Not Found", str(exc)) from None
    except CameraUnavailable as exc:
        raise ProblemError(503, "Service Unavailable", str(exc),
                           headers={"Retry-After": "5"}) from None
