"""Camera configuration (no OpenCV import: settings load it in every process)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

CameraKind = Literal["v4l2", "rtsp", "http", "file"]
_V4L2_DEVICE = re.compile(r"^/dev/video\d+$")
_URL_SCHEMES: dict[str, tuple[str, ...]] = {
    "rtsp": ("rtsp://", "rtsps://"),
    "http": ("http://", "https://"),
}


class CameraConfig(BaseModel):
    """One camera of this node. ``location`` is a device path, URL or file path; it may hold
    stream credentials, so the API never shows it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    kind: CameraKind
    location: str = Field(min_length=1)
    description: str = ""
    width: int | None = Field(default=None, ge=16, le=7680)
    height: int | None = Field(default=None, ge=16, le=4320)
    jpeg_quality: int = Field(default=85, ge=1, le=100)
    read_timeout_s: float = Field(default=5.0, gt=0, le=60)
    keep_open: bool | None = None

    @model_validator(mode="after")
    def _location_fits_kind(self) -> CameraConfig:
        if self.kind == "v4l2" and not _V4L2_DEVICE.match(self.location):
            raise ValueError(f"a v4l2 camera needs a /dev/videoN device, not {self.location!r}")
        schemes = _URL_SCHEMES.get(self.kind)
        if schemes and not self.location.lower().startswith(schemes):
            raise ValueError(
                f"a {self.kind} camera needs a URL starting with {' or '.join(schemes)}"
            )
        return self

    @property
    def stays_open(self) -> bool:
        return self.keep_open if self.keep_open is not None else self.kind == "file"
