"""Typed errors of the inference API: each names the check that failed and what to do next.

Each class is a :class:`kernel.errors.CheckedError`: ``check`` (the stable id of the failed
step), ``detail`` (what was wrong, with the offending value), ``hint`` (what to do next) and the
HTTP ``status`` a route answers with when the error leaves it (the one handler of
:mod:`kernel.problems` renders it: type ``urn:umec:inference:<check>``, and the whole sentence as
``detail``). The core never knows about HTTP. ``str(error)`` reads
``check <check> failed: <detail>; <hint>``.
"""

from __future__ import annotations

from kernel.errors import CheckedError


class InferenceError(CheckedError):
    """Base of every error the inference package raises on purpose."""

    check = "inference"  # the class's check; an instance may name a more precise one
    hint = ""
    problem_namespace = "urn:umec:inference:"

    def __init__(self, detail: str, hint: str = "", *, check: str | None = None) -> None:
        super().__init__(detail, check=check, hint=hint)

    def message(self) -> str:
        advice = f"; {self.hint}" if self.hint else ""
        return f"check {self.check} failed: {self.detail}{advice}"

    def problem_detail(self) -> str:
        return str(self)


class ImageRejected(InferenceError):
    """The submitted bytes are not an image this service classifies."""

    status = 422


class EmptyImage(ImageRejected):
    check = "image_present"

    def __init__(self) -> None:
        super().__init__("the body is empty", "send a JPEG or PNG image")


class UnsupportedImageFormat(ImageRejected):
    check = "image_format"
    status = 415

    def __init__(self, magic: bytes) -> None:
        self.magic = magic
        super().__init__(
            f"the data starts with {magic.hex() or 'nothing'}, "
            "which is neither JPEG (ffd8ff) nor PNG (89504e47)",
            "send a JPEG or PNG image",
        )


class ImageTooManyBytes(ImageRejected):
    check = "image_bytes"
    status = 413

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"the image has more than {limit} bytes{f' ({size})' if size > limit else ''}",
            "send a smaller image",
        )


class ImageTooManyPixels(ImageRejected):
    check = "image_dimensions"

    def __init__(self, width: int, height: int, max_pixels: int, max_side: int) -> None:
        self.width = width
        self.height = height
        super().__init__(
            f"{width}x{height} exceeds the limit of {max_pixels} pixels or {max_side} pixels "
            "per side",
            "scale the image down first",
        )


class ImageMalformed(ImageRejected):
    check = "image_decodes"

    def __init__(self, fmt: str, reason: str) -> None:
        self.format = fmt
        self.reason = reason
        super().__init__(f"the {fmt} data is malformed ({reason})",
                         "send a complete, valid image")


class ContentTypeMismatch(ImageRejected):
    check = "content_type"
    status = 415

    def __init__(self, declared: str, actual: str) -> None:
        self.declared = declared
        self.actual = actual
        super().__init__(f"declared {declared} but the data is {actual}",
                         "send the matching Content-Type")


class ContentTypeNotAccepted(ImageRejected):
    """The request's Content-Type is not an image type the classifier takes."""

    check = "content_type"
    status = 415

    def __init__(self, media_type: str, accepted: tuple[str, ...]) -> None:
        self.media_type = media_type
        super().__init__(f"{media_type or 'no Content-Type'} is not accepted",
                         "send the image as the body with Content-Type "
                         + " or ".join(accepted))


class ModelUnavailable(InferenceError):
    """The model cannot be prepared or loaded (missing weights, no torch to export, bad cache);
    ``check`` names the step (weights_installed, weights_digest, model_export,
    onnx_matches_torch, model_available)."""

    check = "model_available"
    public = False  # its detail names the server's files: a client gets the generic 500
