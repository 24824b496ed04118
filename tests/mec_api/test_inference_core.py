"""The pure inference core: image checks before decoding, preprocessing, top-k, the label list."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data as photos

from mec_api.inference.errors import (
    ContentTypeMismatch,
    EmptyImage,
    ImageMalformed,
    ImageTooManyBytes,
    ImageTooManyPixels,
    UnsupportedImageFormat,
)
from mec_api.inference.image import (
    INPUT_SIZE,
    ImageLimits,
    check_image,
    decode_rgb,
    read_header,
    to_input_tensor,
)
from mec_api.inference.scoring import load_imagenet_labels, softmax, top_k
from tests.support.media import png_declaring

LIMITS = ImageLimits()


def encode(rgb: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize("ext,fmt", [(".jpg", "jpeg"), (".png", "png")])
def test_header_gives_format_and_size_of_real_photos(ext: str, fmt: str) -> None:
    coffee = photos.coffee()  # 400 x 600
    header = read_header(encode(coffee, ext))
    assert (header.format, header.width, header.height) == (fmt, 600, 400)


def test_progressive_jpeg_header_is_read() -> None:
    ok, buf = cv2.imencode(".jpg", photos.chelsea()[:, :, ::-1], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ok
    header = read_header(buf.tobytes())
    assert (header.width, header.height) == (451, 300)


def test_non_images_are_rejected_by_name() -> None:
    with pytest.raises(EmptyImage):
        read_header(b"")
    with pytest.raises(UnsupportedImageFormat, match="image_format"):
        read_header(b"hello, I am plain text and not a picture")
    with pytest.raises(UnsupportedImageFormat):
        read_header(b"GIF89a\x01\x00\x01\x00")
    with pytest.raises(ImageMalformed, match="IHDR"):
        read_header(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(ImageMalformed, match="SOF"):
        read_header(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00")


def test_huge_declared_dimensions_are_refused_before_decoding() -> None:
    bomb = png_declaring(100_000, 100_000)
    assert len(bomb) < 100
    with pytest.raises(ImageTooManyPixels, match="100000x100000"):
        check_image(bomb, LIMITS)
    with pytest.raises(ImageTooManyPixels):  # within the pixel budget but absurdly long
        check_image(png_declaring(20_000, 2), LIMITS)
    with pytest.raises(ImageMalformed, match="0x10"):
        check_image(png_declaring(0, 10), LIMITS)


def test_byte_limit_and_declared_type() -> None:
    jpeg = encode(photos.coffee(), ".jpg")
    with pytest.raises(ImageTooManyBytes):
        check_image(jpeg, ImageLimits(max_bytes=len(jpeg) - 1))
    assert check_image(jpeg, ImageLimits(max_bytes=len(jpeg))).format == "jpeg"
    with pytest.raises(ContentTypeMismatch, match="image/png"):
        check_image(jpeg, LIMITS, declared_type="image/png")


def test_truncated_images_do_not_decode() -> None:
    jpeg = encode(photos.coffee(), ".jpg")
    png = encode(photos.coffee(), ".png")
    with pytest.raises(ImageMalformed, match="jpeg"):
        decode_rgb(jpeg[: len(jpeg) // 2], LIMITS)
    with pytest.raises(ImageMalformed, match="png"):
        decode_rgb(png[: len(png) // 2], LIMITS)


def test_decode_returns_rgb_in_the_right_channel_order() -> None:
    red = np.zeros((32, 48, 3), np.uint8)
    red[..., 0] = 255
    rgb = decode_rgb(encode(red, ".png"), LIMITS)
    assert rgb.shape == (32, 48, 3)
    assert rgb[..., 0].min() == 255 and rgb[..., 1:].max() == 0


def test_input_tensor_is_centre_crop_scaled_to_minus_one_one() -> None:
    # Left half black, right half white, in a wide image: the 87.5 % centre crop keeps both.
    img = np.zeros((300, 900, 3), np.uint8)
    img[:, 450:] = 255
    tensor = to_input_tensor(img)
    assert tensor.shape == (1, 3, INPUT_SIZE, INPUT_SIZE) and tensor.dtype == np.float32
    assert tensor[0, :, :, :100].max() == pytest.approx(-1.0)
    assert tensor[0, :, :, -100:].min() == pytest.approx(1.0)
    # Tiny images are scaled up rather than refused.
    assert to_input_tensor(np.full((8, 8, 3), 128, np.uint8)).shape == (1, 3, 224, 224)


def test_labels_are_the_imagenet_1k_list_in_index_order() -> None:
    labels = load_imagenet_labels()
    assert len(labels) == 1000
    assert labels[0] == "tench" and labels[999] == "toilet tissue"
    assert labels[281:286] == ("tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat")
    assert (labels[504], labels[967], labels[968]) == ("coffee mug", "espresso", "cup")
    assert labels[134] == labels[517] == "crane"  # the bird and the machine share a name


def test_top_k_orders_by_softmax_probability() -> None:
    labels = tuple(f"class {i}" for i in range(10))
    logits = np.array([0, 5, 1, 9, 2, 3, 4, 0, 0, 1000], np.float32)
    best = top_k(logits, labels, 3)
    assert [p.index for p in best] == [9, 3, 1]
    assert best[0].label == "class 9" and best[0].score == pytest.approx(1.0)
    assert softmax(np.array([1, 1], np.float32)).tolist() == [0.5, 0.5]
    with pytest.raises(ValueError):
        top_k(logits, labels, 0)
    with pytest.raises(ValueError):
        top_k(logits[:5], labels, 1)
