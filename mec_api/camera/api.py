"""Camera API ``/camera/v1``: list this node's cameras and take JPEG snapshots.

Both routes need scope ``camera.snapshot``. The listing shows id, kind, description and output
size, never ``location`` (device paths and stream URLs, which may carry credentials, are the
operator's business). Errors are problem+json: unknown camera 404, a camera that gives no
frame (missing device, stream down, timeout, busy) 503 with ``Retry-After``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel

from mec_api.camera.config import CameraKind
from mec_api.camera.deps import CameraSet, SnapshotTaker
from mec_api.camera.snapshots import snapshot_or_problem
from mec_api.problems import ProblemRoute

CameraId = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
router = APIRouter(prefix="/camera/v1", tags=["camera"], route_class=ProblemRoute)


class CameraView(BaseModel):
    id: str
    kind: CameraKind
    description: str
    width: int | None
    height: int | None


class CameraList(BaseModel):
    cameras: list[CameraView]


@router.get("/cameras", response_model=CameraList)
async def list_cameras(principal: SnapshotTaker, cameras: CameraSet) -> CameraList:
    return CameraList(cameras=[
        CameraView(id=c.id, kind=c.kind, description=c.description, width=c.width,
                   height=c.height)
        for c in cameras.configs()])


@router.get(
    "/cameras/{camera_id}/snapshot",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}, "description": "one JPEG frame"}},
)
async def snapshot(camera_id: CameraId, principal: SnapshotTaker,
                   cameras: CameraSet) -> Response:
    jpeg = await snapshot_or_problem(cameras, camera_id)
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})
