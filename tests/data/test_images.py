"""Image decoding (EXIF, 16-bit, alpha), resizing and lossless PNG encoding."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from vesselctl.data.images import (
    PlainPng,
    decode_image_bytes,
    encode_png,
    plain_png,
    resize_image,
    to_uint8,
)
from vesselctl.errors import DatasetError


def _save(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def test_exif_orientation_is_applied_like_labelme():
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255  # left half white
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    data = _save(image, "JPEG", exif=exif.tobytes(), quality=95)
    decoded = decode_image_bytes(data, "x.jpg")
    assert decoded.shape == (40, 20, 3)
    assert decoded[:20].mean() > 200 and decoded[20:].mean() < 50  # white half now on top
    raw = decode_image_bytes(data, "x.jpg", apply_exif=False)
    assert raw.shape == (20, 40, 3)


def test_sixteen_bit_gray_png_keeps_depth_and_scales_to_uint8():
    pixels = np.array([[0, 257, 65535], [1000, 30000, 65280]], np.uint16)
    decoded = decode_image_bytes(encode_png(pixels), "x.png")
    assert decoded.dtype == np.uint16 and (decoded == pixels).all()
    assert to_uint8(decoded).tolist() == [[0, 1, 255], [4, 117, 254]]


def test_rgba_and_palette_become_rgb_and_gray_stays_gray():
    rgba = np.zeros((3, 3, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 10
    decoded = decode_image_bytes(encode_png(rgba[..., :3]), "x.png")
    assert decoded.shape == (3, 3, 3) and decoded[0, 0].tolist() == [200, 0, 0]
    from_pil = decode_image_bytes(_save(Image.fromarray(rgba, "RGBA"), "PNG"), "y.png")
    assert from_pil.shape == (3, 3, 3) and from_pil[0, 0, 0] == 200
    palette = Image.fromarray(np.zeros((3, 3), np.uint8)).convert("P")
    assert decode_image_bytes(_save(palette, "GIF"), "z.gif").shape == (3, 3, 3)
    gray = decode_image_bytes(encode_png(np.full((3, 3), 9, np.uint8)), "g.png")
    assert gray.shape == (3, 3)


@pytest.mark.parametrize("data", [b"", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, b"not an image"])
def test_unreadable_images_raise_a_dataset_error_naming_the_file(data):
    with pytest.raises(DatasetError, match=r"broken.png"):
        decode_image_bytes(data, "broken.png")


def test_truncated_png_is_an_error():
    data = encode_png(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    with pytest.raises(DatasetError, match=r"cut.png"):
        decode_image_bytes(data[: len(data) // 2], "cut.png")


@pytest.mark.parametrize("mode", ["fast", "small"])
@pytest.mark.parametrize("kind", ["image", "mask"])
def test_png_is_lossless_and_deterministic(mode, kind):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (33, 17, 3), dtype=np.uint8)
    if kind == "mask":
        pixels = (pixels[..., 0] > 128).astype(np.uint8) * 255
    data = encode_png(pixels, mode, kind)
    assert data == encode_png(pixels, mode, kind)
    assert (decode_image_bytes(data, "x.png") == pixels).all()


def test_resize_uses_area_when_shrinking_and_keeps_alignment():
    pixels = np.zeros((800, 800), np.uint8)
    pixels[:, 400:] = 200
    small = resize_image(pixels, 512, 512)
    assert small.shape == (512, 512)
    assert (small[:, :256] == 0).all() and (small[:, 256:] == 200).all()
    assert resize_image(small, 512, 512) is small
    assert resize_image(small, 1024, 600).shape == (1024, 600)


def test_pillow_fallback_without_opencv(monkeypatch) -> None:
    """Where OpenCV is missing (minimal GPU images), PNGs still decode and encode losslessly."""
    import numpy as np

    from vesselctl.data import images

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    gray16 = rng.integers(0, 65536, (5, 6), dtype=np.uint16)
    with_cv2 = [images.encode_png(rgb), images.encode_png(gray16)]
    monkeypatch.setattr(images, "_cv2", lambda: None)
    for array, encoded in zip((rgb, gray16), with_cv2, strict=True):
        np.testing.assert_array_equal(images.decode_image_bytes(encoded, "x.png"), array)
        np.testing.assert_array_equal(
            images.decode_image_bytes(images.encode_png(array), "y.png"), array
        )
    assert images.resize_image(rgb, 4, 3).shape == (4, 3, 3)


def _pillow_png(array: np.ndarray, **kwargs) -> bytes:
    return _save(Image.fromarray(array), "PNG", **kwargs)


@pytest.mark.parametrize("channels", [1, 3])
def test_plain_png_reads_the_header_of_8_bit_gray_and_rgb(channels):
    shape = (30, 50) if channels == 1 else (30, 50, 3)
    pixels = np.random.default_rng(channels).integers(0, 256, shape, dtype=np.uint8)
    for data in (encode_png(pixels), _pillow_png(pixels)):
        assert plain_png(data) == PlainPng(30, 50, channels)
        assert (decode_image_bytes(data, "x.png") == pixels).all()


def test_plain_png_refuses_what_cannot_be_copied_as_is():
    gray = np.random.default_rng(0).integers(0, 256, (20, 20), dtype=np.uint8)
    rgba = np.dstack([gray, gray, gray, gray])
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "patient name")
    exif = Image.Exif()
    exif[0x0112] = 6
    for data in (
        encode_png(gray.astype(np.uint16) * 257),  # 16-bit
        _pillow_png(rgba),  # alpha
        _save(Image.fromarray(gray).convert("P"), "PNG"),  # palette
        _pillow_png(gray, pnginfo=text),  # text chunk (metadata we would copy)
        _pillow_png(gray, exif=exif.tobytes()),  # eXIf: orientation may apply
        _save(Image.fromarray(gray), "JPEG"),
        b"",
    ):
        assert plain_png(data) is None


def test_plain_png_refuses_damaged_files_which_decoding_then_reports():
    data = _pillow_png(np.random.default_rng(1).integers(0, 256, (40, 40), dtype=np.uint8))
    assert plain_png(data) is not None
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01  # inside the IDAT: its CRC no longer matches
    for damaged in (
        bytes(flipped),
        data[:-12],  # no IEND
        data[: len(data) // 2],  # truncated
        data + b"junk",  # bytes after IEND
    ):
        assert plain_png(damaged) is None
    for damaged in (bytes(flipped), data[:-12], data[: len(data) // 2]):
        with pytest.raises(DatasetError, match=r"cut.png: cannot decode"):
            decode_image_bytes(damaged, "cut.png")
