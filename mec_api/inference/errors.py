"""Typed errors of the inference API: each names the check that failed and what to do next.

The HTTP adapter maps each class to one status (``api.py``); the core never knows about HTTP.
"""

from __future__ import annotations


class InferenceError(Exception):
    """Base of every error the inference package raises on purpose."""


class ImageRejected(InferenceError):
    """The submitted bytes are not an image this service classifies."""


class EmptyImage(ImageRejected):
    def __init__(self) -> None:
        super().__init__("check image_present failed: the body is empty; send a JPEG or PNG image")


class UnsupportedImageFormat(ImageRejected):
    def __init__(self, magic: bytes) -> None:
        self.magic = magic
        super().__init__(
            f"check image_format failed: the data starts with {magic.hex() or 'nothing'}, "
            "which is neither JPEG (ffd8ff) nor PNG (89504e47); send a JPEG or PNG image"
        )


class ImageTooManyBytes(ImageRejected):
    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"check image_bytes failed: the image has more than {limit} bytes"
            f"{f' ({size})' if size > limit else ''}; send a smaller image"
        )


class ImageTooManyPixels(ImageRejected):
    def __init__(self, width: int, height: int, max_pixels: int, max_side: int) -> None:
        self.width = width
        self.height = height
        super().__init__(
            f"check image_dimensions failed: {width}x{height} exceeds the limit of "
            f"{max_pixels} pixels or {max_side} pixels per side; scale the image down first"
        )


class ImageMalformed(ImageRejected):
    def __init__(self, fmt: str, reason: str) -> None:
        self.format = fmt
        self.reason = reason
        super().__init__(
            f"check image_decodes failed: the {fmt} data is malformed ({reason}); "
            "send a complete, valid image"
        )


class ContentTypeMismatch(ImageRejected):
    def __init__(self, declared: str, actual: str) -> None:
        self.declared = declared
        self.actual = actual
        super().__init__(
            f"check content_type failed: declared {declared} but the data is {actual}; "
            "send the matching Content-Type"
        )


class ModelUnavailable(InferenceError):
    """The model cannot be prepared or loaded (missing weights, no torch to export, bad cache)."""
