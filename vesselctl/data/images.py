"""Image decoding, resizing and lossless encoding.

Arrays are numpy ``uint8`` or ``uint16``: ``(H, W)`` for grayscale, ``(H, W, 3)`` in RGB order for
colour. Alpha is dropped, palettes expanded. EXIF orientation is applied, as LabelMe does when it
shows an image, so annotation coordinates line up with the pixels returned here.

OpenCV decodes PNG (faster than Pillow); Pillow decodes everything else because it reads EXIF
reliably for every format. Output is always PNG (lossless).
"""

from __future__ import annotations

import io
import struct
import threading
import zlib
from dataclasses import dataclass
from types import ModuleType

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vesselctl.errors import DatasetError

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Decoding a hostile file must not allocate unbounded memory (Pillow's own guard is a warning).
MAX_IMAGE_PIXELS = 40_000 * 40_000


def _cv2() -> ModuleType | None:
    """OpenCV when it can be imported, else None.

    OpenCV is a dependency and the fast path; the Pillow fallback keeps reading and writing
    working where a minimal image (e.g. a GPU machine with the package installed without its
    dependencies) lacks it. The two paths decode identically; encoded PNG bytes may differ.
    """
    # Looked up once, under a lock: predict's writer threads call this together, and a thread
    # racing a failing first import could get the half-initialised module object.
    if not _CV2_MODULE:
        with _CV2_LOCK:
            if not _CV2_MODULE:
                try:
                    import cv2
                except ImportError:
                    cv2 = None  # type: ignore[assignment]
                _CV2_MODULE.append(cv2)
    return _CV2_MODULE[0]


_CV2_LOCK = threading.Lock()
_CV2_MODULE: list[ModuleType | None] = []


def _png_has_exif(data: bytes) -> bool:
    """True when a PNG carries an ``eXIf`` chunk before its pixel data (orientation may follow)."""
    offset = len(_PNG_SIGNATURE)
    while offset + 8 <= len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        if kind == b"eXIf":
            return True
        if kind in (b"IDAT", b"IEND"):
            return False
        offset += 12 + length
    return False


@dataclass(frozen=True)
class PlainPng:
    """Size and channels of a PNG whose bytes can stand for its pixels as they are."""

    height: int
    width: int
    channels: int  # 1 (8-bit gray) or 3 (8-bit RGB)


# Only the critical chunks: a PNG with anything else (EXIF orientation, transparency, colour
# profiles, gamma, text that may name a patient) goes through decode + re-encode, which drops it.
_PLAIN_CHUNKS = frozenset({b"IHDR", b"IDAT", b"IEND"})
_PLAIN_COLOUR_TYPES = {0: 1, 2: 3}  # PNG colour type -> channels: 8-bit gray, 8-bit RGB


def plain_png(data: bytes) -> PlainPng | None:
    """The header of a PNG that prepare may copy byte for byte instead of re-encoding, else None.

    Plain means: 8-bit gray or RGB, not interlaced, only IHDR, IDAT... and IEND chunks in that
    order with nothing after IEND, and every chunk's CRC-32 correct, so a truncated or damaged
    file is caught as the decoder would catch it (None: the caller decodes it and reports the
    error). Copying such a file is lossless: it decodes to exactly the pixels a decode +
    re-encode would write, with no metadata to drop. What the CRCs cannot show is a deflate
    stream that an encoder got wrong before computing them; checking that means inflating every
    IDAT (most of a full decode), which is what this shortcut saves.
    """
    size = len(data)
    if size < 57 or not data.startswith(_PNG_SIGNATURE):  # signature + IHDR + IDAT + IEND
        return None
    length, kind = struct.unpack_from(">I4s", data, 8)
    if kind != b"IHDR" or length != 13:
        return None
    width, height, depth, colour, compression, filtering, interlace = struct.unpack_from(
        ">IIBBBBB", data, 16
    )
    if (
        depth != 8
        or colour not in _PLAIN_COLOUR_TYPES
        or (compression, filtering, interlace) != (0, 0, 0)
        or not (width > 0 and height > 0)
        or width * height > MAX_IMAGE_PIXELS
    ):
        return None
    offset, previous, seen_idat = 8, b"", False
    while offset + 12 <= size:
        length, kind = struct.unpack_from(">I4s", data, offset)
        end = offset + 12 + length
        if kind not in _PLAIN_CHUNKS or end > size:
            return None
        if kind == b"IDAT":
            if seen_idat and previous != b"IDAT":
                return None  # IDAT chunks must be consecutive
            seen_idat = True
        elif kind == b"IHDR" and offset != 8:
            return None
        (stored_crc,) = struct.unpack_from(">I", data, end - 4)
        if zlib.crc32(memoryview(data)[offset + 4 : end - 4]) != stored_crc:
            return None
        if kind == b"IEND":
            if length != 0 or end != size or not seen_idat:
                return None
            return PlainPng(height, width, _PLAIN_COLOUR_TYPES[colour])
        previous, offset = kind, end
    return None  # no IEND: truncated


def _normalise_channels(array: np.ndarray, name: str) -> np.ndarray:
    """(H,W) gray or (H,W,3) RGB from what a decoder gave (alpha dropped)."""
    if array.ndim == 2:
        return array
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return np.ascontiguousarray(array[..., :3])
    if array.ndim == 3 and array.shape[2] in (1, 2):
        return np.ascontiguousarray(array[..., 0])
    raise DatasetError(f"{name}: image has shape {array.shape}; expected gray or RGB pixels")


def _decode_with_pillow(data: bytes, name: str, apply_exif: bool) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise DatasetError(
                    f"{name}: image is {image.width}x{image.height}; larger than vesselctl reads"
                )
            image.load()
            if apply_exif:
                image = ImageOps.exif_transpose(image)
            mode = image.mode
            if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
                array = np.asarray(image, dtype=np.uint16)
            elif mode == "I":
                values = np.asarray(image)
                if values.min() < 0 or values.max() > 65535:
                    raise DatasetError(
                        f"{name}: 32-bit integer pixels outside 0..65535; "
                        "expected 8- or 16-bit images; convert the image to 16-bit PNG"
                    )
                array = values.astype(np.uint16)
            elif mode in ("L", "RGB"):
                array = np.asarray(image)
            elif mode in ("1", "P", "PA", "LA", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
                target = "L" if mode in ("1", "LA") else "RGB"
                array = np.asarray(image.convert(target))
            else:
                raise DatasetError(
                    f"{name}: image mode {mode} is not supported; "
                    "expected 8/16-bit grayscale or RGB; convert the image to PNG"
                )
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(
            f"{name}: cannot decode the image ({exc}); the file is truncated or not an image: "
            "re-export it"
        ) from exc
    return _normalise_channels(array, name)


def decode_image_bytes(data: bytes, name: str, apply_exif: bool = True) -> np.ndarray:
    """Decode encoded image bytes to a uint8/uint16 gray or RGB array (EXIF orientation applied).

    ``name`` is used in the DatasetError raised for unreadable or truncated data.
    """
    if not data:
        raise DatasetError(f"{name}: the image file is empty; re-export it")
    cv2 = _cv2()
    if (
        cv2 is not None
        and data.startswith(_PNG_SIGNATURE)
        and not (apply_exif and _png_has_exif(data))
    ):
        array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if array is None:
            raise DatasetError(
                f"{name}: cannot decode the PNG; the file is truncated or corrupt: re-export it"
            )
        if array.ndim == 3 and array.shape[2] >= 3:
            code = cv2.COLOR_BGRA2RGB if array.shape[2] == 4 else cv2.COLOR_BGR2RGB
            array = cv2.cvtColor(array, code)
        if array.dtype not in (np.uint8, np.uint16):
            raise DatasetError(f"{name}: PNG with {array.dtype} pixels; expected 8 or 16 bit")
        return _normalise_channels(array, name)
    return _decode_with_pillow(data, name, apply_exif)


def read_image(path, name: str | None = None, apply_exif: bool = True) -> np.ndarray:
    """Read and decode an image file; see ``decode_image_bytes``."""
    label = name or str(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise DatasetError(f"{label}: cannot read the image ({exc.strerror})") from exc
    return decode_image_bytes(data, label, apply_exif)


def to_uint8(array: np.ndarray) -> np.ndarray:
    """8-bit pixels: uint16 is scaled linearly over its full range (0..65535 -> 0..255)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        # Rounded division by 257 maps 65535 -> 255 exactly and keeps the scale linear.
        return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    raise DatasetError(f"image has {array.dtype} pixels; expected uint8 or uint16")


def resize_image(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize with INTER_AREA when shrinking (no aliasing) and INTER_CUBIC when enlarging.

    OpenCV maps pixel centres to pixel centres, the same convention the mask rasteriser uses,
    so image and mask stay aligned at any scale.
    """
    in_h, in_w = array.shape[:2]
    if (in_h, in_w) == (height, width):
        return array
    shrinking = height <= in_h and width <= in_w
    cv2 = _cv2()
    if cv2 is None:
        resample = Image.Resampling.BOX if shrinking else Image.Resampling.BICUBIC
        return np.asarray(Image.fromarray(array).resize((width, height), resample))
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    return cv2.resize(array, (width, height), interpolation=interpolation)


def _png_params(cv2: ModuleType, kind: str, mode: str) -> list[int]:
    """OpenCV PNG writer parameters.

    ``fast`` (default): images use the Up filter with Huffman-only zlib (faster than OpenCV's
    default at zlib level 1; Paeth was slower for few bytes saved); binary masks use no filter
    with run-length zlib (long runs of 0 and 255). ``small``: zlib level 9 with adaptive filters.
    Both are lossless; the mode only trades time for bytes.
    """
    if mode == "small":
        return [cv2.IMWRITE_PNG_COMPRESSION, 9]
    params = [cv2.IMWRITE_PNG_COMPRESSION, 1]
    if kind == "mask":
        params += [cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
        if hasattr(cv2, "IMWRITE_PNG_FILTER"):  # OpenCV >= 4.10
            params += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]
    else:
        params += [cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY]
        if hasattr(cv2, "IMWRITE_PNG_FILTER"):
            params += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
    return params


def encode_png(array: np.ndarray, mode: str = "fast", kind: str = "image") -> bytes:
    """Lossless PNG bytes of a gray or RGB array (``kind`` image or mask, ``mode`` fast or small).

    The same input and OpenCV version give the same bytes, so re-runs are byte-identical.
    """
    cv2 = _cv2()
    if cv2 is None:
        buffer = io.BytesIO()
        Image.fromarray(array).save(
            buffer, format="PNG", compress_level=9 if mode == "small" else 1
        )
        return buffer.getvalue()
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, buffer = cv2.imencode(".png", array, _png_params(cv2, kind, mode))
    if not ok:  # pragma: no cover - OpenCV fails only on unsupported dtypes, checked upstream
        raise DatasetError(f"could not encode a {array.dtype} {array.shape} array as PNG")
    return buffer.tobytes()
