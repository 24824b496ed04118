"""Camera API: JPEG snapshots from V4L2 devices, RTSP/HTTP MJPEG streams and video files.

``snapshots`` holds the small contract other packages use (``SnapshotSource`` and its errors)
and imports no OpenCV; ``sources`` opens and reads the cameras; ``api`` is the HTTP adapter.
"""
