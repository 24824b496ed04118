"""What the camera routes need, as ``app.state.camera`` (this node's cameras), and their
typed dependencies."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from mec_api import scopes
from mec_api.camera.sources import Cameras
from mec_api.deps import app_state, requires
from mec_api.principal import Principal


async def camera_sources(request: Request) -> Cameras:
    return app_state(request, "camera", Cameras)


CameraSet = Annotated[Cameras, Depends(camera_sources)]
SnapshotTaker = Annotated[Principal, Depends(requires(scopes.CAMERA_SNAPSHOT))]
