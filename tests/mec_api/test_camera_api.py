"""Camera API over HTTP against real OpenCV captures: a video file the test writes with
cv2.VideoWriter and an MJPEG stream served by a real HTTP server on loopback.

There is no V4L2 device on the build machines: a configured /dev/videoN that does not exist must
give a clean 503 (that is what a node whose webcam is unplugged sees).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from mec_api import scopes
from mec_api.camera.api import router
from mec_api.camera.snapshots import CameraBusy, CameraTimeout, CameraUnavailable, UnknownCamera
from mec_api.camera.sources import CameraConfig, Cameras
from tests.support.guard_double import StaticTokenGuard, api_app, principal
from tests.support.media import write_video

# BGR colours of the frames in the test video, in order.
FRAME_COLOURS = [(0, 0, 255), (0, 255, 0), (255, 0, 0)]
AUTH = {"Authorization": "Bearer cam"}


def solid(colour: tuple[int, int, int], width: int = 160, height: int = 120) -> np.ndarray:
    frame = np.zeros((height, width, 3), np.uint8)
    frame[:] = colour
    return frame


def mean_bgr(jpeg: bytes) -> tuple[float, float, float]:
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None, "the snapshot is not a decodable JPEG"
    b, g, r = img.reshape(-1, 3).mean(axis=0)
    return float(b), float(g), float(r)


def dominant(jpeg: bytes) -> int:
    """Index (B=0, G=1, R=2) of the strongest channel of a snapshot."""
    return int(np.argmax(mean_bgr(jpeg)))


class MjpegHandler(BaseHTTPRequestHandler):
    """multipart/x-mixed-replace, as IP webcams (and the Pi's mjpg-streamer) serve it."""

    frame: bytes = b""
    max_frames = 200

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        try:
            for _ in range(self.max_frames):  # bounded: the server stops by itself
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n")
                self.wfile.write(f"Content-Length: {len(self.frame)}\r\n\r\n".encode())
                self.wfile.write(self.frame + b"\r\n")
                time.sleep(0.02)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def mjpeg_url() -> Iterator[str]:
    ok, jpeg = cv2.imencode(".jpg", solid((0, 255, 255), 320, 240))  # yellow
    assert ok
    handler = type("Handler", (MjpegHandler,), {"frame": jpeg.tobytes()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/stream.mjpg"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("camera") / "colours.avi"
    return write_video(path, [solid(c) for c in FRAME_COLOURS])


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def cameras(video: Path, mjpeg_url: str) -> Iterator[Cameras]:
    set_ = Cameras(
        [
            CameraConfig(id="lobby", kind="file", location=str(video), description="test video"),
            CameraConfig(id="small", kind="file", location=str(video), width=80),
            CameraConfig(id="gate", kind="http", location=mjpeg_url, read_timeout_s=5),
            CameraConfig(id="usb", kind="v4l2", location="/dev/video97"),
            CameraConfig(id="gone", kind="file", location=str(video.parent / "missing.avi")),
            CameraConfig(
                id="down",
                kind="http",
                location=f"http://127.0.0.1:{closed_port()}/x.mjpg",
                read_timeout_s=2,
            ),
        ]
    )
    yield set_
    set_.close()


@pytest.fixture
def client(cameras: Cameras) -> Iterator[TestClient]:
    guard = StaticTokenGuard(
        {
            "cam": principal(scopes={scopes.CAMERA_SNAPSHOT}),
            "sensor-only": principal(scopes={scopes.SENSOR_READ, scopes.INFERENCE_CLASSIFY}),
        }
    )
    app = api_app(guard, router, camera=cameras)
    with TestClient(app) as c:
        yield c


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert "Traceback" not in response.text and "cv2" not in response.text
    return body


def test_list_shows_cameras_but_never_their_locations(client: TestClient, mjpeg_url: str) -> None:
    response = client.get("/camera/v1/cameras", headers=AUTH)
    assert response.status_code == 200
    cams = {c["id"]: c for c in response.json()["cameras"]}
    assert set(cams) == {"lobby", "small", "gate", "usb", "gone", "down"}
    assert cams["lobby"] == {
        "id": "lobby",
        "kind": "file",
        "description": "test video",
        "width": None,
        "height": None,
    }
    assert "127.0.0.1" not in response.text and "/dev/video" not in response.text
    assert ".avi" not in response.text


def test_video_file_snapshots_advance_frame_by_frame_and_loop(client: TestClient) -> None:
    channels = []
    for _ in range(len(FRAME_COLOURS) + 2):
        response = client.get("/camera/v1/cameras/lobby/snapshot", headers=AUTH)
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/jpeg"
        assert response.headers["cache-control"] == "no-store"
        channels.append(dominant(response.content))
    assert channels == [2, 1, 0, 2, 1]  # red, green, blue, then the video starts over


def test_configured_width_scales_the_snapshot(client: TestClient) -> None:
    response = client.get("/camera/v1/cameras/small/snapshot", headers=AUTH)
    img = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape[:2] == (60, 80)  # 160x120 scaled to width 80, aspect kept


def test_http_mjpeg_stream_snapshot(client: TestClient) -> None:
    for _ in range(2):  # opened per snapshot: a second one works as well
        response = client.get("/camera/v1/cameras/gate/snapshot", headers=AUTH)
        assert response.status_code == 200, response.text
        b, g, r = mean_bgr(response.content)
        assert g > 200 and r > 200 and b < 60  # yellow


def test_missing_v4l2_device_is_a_clean_503(client: TestClient) -> None:
    response = client.get("/camera/v1/cameras/usb/snapshot", headers=AUTH)
    body = assert_problem(response, 503)
    assert "'usb'" in body["detail"] and "device" in body["detail"]
    assert response.headers["retry-after"]


def test_missing_file_and_unreachable_stream_are_503(client: TestClient) -> None:
    assert_problem(client.get("/camera/v1/cameras/gone/snapshot", headers=AUTH), 503)
    started = time.monotonic()
    assert_problem(client.get("/camera/v1/cameras/down/snapshot", headers=AUTH), 503)
    assert time.monotonic() - started < 4  # within the 2 s read timeout (plus slack)


def test_unknown_camera_is_404(client: TestClient) -> None:
    body = assert_problem(client.get("/camera/v1/cameras/nope/snapshot", headers=AUTH), 404)
    assert "nope" in body["detail"]
    assert_problem(client.get("/camera/v1/cameras/NOT..valid/snapshot", headers=AUTH), 400)


def test_no_token_is_401_and_missing_scope_is_403(client: TestClient) -> None:
    for path in ("/camera/v1/cameras", "/camera/v1/cameras/lobby/snapshot"):
        unauth = assert_problem(client.get(path), 401)
        assert unauth["title"] == "Unauthorized"
        assert "WWW-Authenticate" in client.get(path).headers
        forbidden = client.get(path, headers={"Authorization": "Bearer sensor-only"})
        assert_problem(forbidden, 403)
        assert "insufficient_scope" in forbidden.headers["www-authenticate"]


def test_config_rejects_locations_that_do_not_fit_the_kind() -> None:
    with pytest.raises(ValidationError, match="/dev/videoN"):
        CameraConfig(id="a", kind="v4l2", location="/etc/passwd")
    with pytest.raises(ValidationError, match="rtsp://"):
        CameraConfig(id="a", kind="rtsp", location="file:///etc/passwd")
    with pytest.raises(ValidationError, match="http://"):
        CameraConfig(id="a", kind="http", location="concat:/a|/b")
    with pytest.raises(ValidationError):
        CameraConfig(id="Bad Id", kind="file", location="/tmp/x.avi")
    with pytest.raises(ValidationError):
        CameraConfig(id="a", kind="file", location="/tmp/x.avi", jpeg_quality=0)
    assert CameraConfig(id="a", kind="rtsp", location="rtsp://cam/1").stays_open is False
    assert CameraConfig(id="a", kind="file", location="/x.avi").stays_open is True
    with pytest.raises(ValueError, match="twice"):
        Cameras([CameraConfig(id="a", kind="file", location="/x")] * 2)


class StuckCapture:
    """A capture whose read blocks until released: a wedged USB camera, in a test."""

    def __init__(self) -> None:
        self.release_read = threading.Event()
        self.released = threading.Event()

    def isOpened(self) -> bool:
        return True

    def read(self) -> tuple[bool, Any]:
        self.release_read.wait(10)
        return True, solid((255, 255, 255))

    def set(self, prop: int, value: float) -> bool:
        return True

    def release(self) -> None:
        self.released.set()


def test_a_wedged_read_times_out_and_blocks_no_second_reader_forever() -> None:
    stuck = StuckCapture()
    config = CameraConfig(id="stuck", kind="v4l2", location="/dev/video0", read_timeout_s=0.3)
    cams = Cameras([config], opener=lambda _: stuck)
    try:
        with pytest.raises(CameraTimeout):
            cams.snapshot("stuck")
        with pytest.raises(CameraBusy):  # the first read still holds the camera
            cams.snapshot("stuck")
        with pytest.raises(UnknownCamera):
            cams.snapshot("other")
        stuck.release_read.set()
        assert stuck.released.wait(2), "the abandoned capture was not released"
        # The camera recovers: the next snapshot reopens the device and succeeds.
        assert dominant(cams.snapshot("stuck")) in (0, 1, 2)
        cams.close()
        cams.close()  # closing twice is harmless
        with pytest.raises(CameraUnavailable, match="shutting down"):
            cams.snapshot("stuck")
    finally:
        stuck.release_read.set()
        cams.close()
