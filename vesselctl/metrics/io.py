"""Reading ground-truth masks, field-of-view masks and predictions, and pairing them by file stem.

Predictions may be binary masks (PNG/TIFF/GIF/BMP holding 0/255 or 0/1) or probability maps
(8-bit or 16-bit images read as value/255 or value/65535; ``.npy``/``.npz`` float arrays in
[0, 1]). An 8- or 16-bit image whose values are all in {0, 1} or {0, max} is a binary mask.
Ground-truth and FOV masks must be binary (any two values; non-zero = vessel / inside).
Every error names the file, what was found and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vesselctl.errors import EvaluationError

MASK_SUFFIXES: tuple[str, ...] = (".png", ".tif", ".tiff", ".gif", ".bmp")
PREDICTION_SUFFIXES: tuple[str, ...] = (*MASK_SUFFIXES, ".npy", ".npz")
NPZ_KEYS: tuple[str, ...] = ("prob", "probability", "pred", "mask")


@dataclass(frozen=True)
class Prediction:
    """One prediction: its binary mask and, for probability maps, the map itself.

    ``prob`` keeps uint8/uint16 levels as stored (value/255 or value/65535) so AUCs can use a
    histogram instead of a sort; float maps are float64 in [0, 1].
    """

    mask: np.ndarray
    prob: np.ndarray | None
    kind: str  # "binary" or "probability"


def index_folder(folder: Path, suffixes: tuple[str, ...], what: str) -> dict[str, Path]:
    """Map file stem -> path for the files in ``folder`` with one of ``suffixes``.

    Hidden files and other suffixes (settings.yaml, result.json...) are skipped; two files with
    one stem (``a.png`` and ``a.npy``) are an error because the pairing would be ambiguous.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise EvaluationError(f"{folder}: {what} folder does not exist or is not a folder")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix.lower() not in suffixes:
            continue
        if path.stem in found:
            raise EvaluationError(
                f"{folder}: {found[path.stem].name} and {path.name} share the stem "
                f"'{path.stem}'; keep one file per image"
            )
        found[path.stem] = path
    if not found:
        raise EvaluationError(
            f"{folder}: no {what} files found (expected {', '.join(suffixes)} named by image id)"
        )
    return found


def _read_image(path: Path) -> np.ndarray:
    """Pixels of an image file as a 2-D array (grey, palette and equal-channel colour images)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            mode = image.mode
            if mode == "P":
                # Grey palettes (e.g. GIF masks) give grey values; colour palettes are label
                # maps (index 0 = background), so their indices are the values.
                rgb = np.asarray(image.convert("RGB"))
                grey = bool((rgb == rgb[..., :1]).all())
                array = rgb[..., 0] if grey else np.asarray(image)
                mode = "L" if grey else "P"
            else:
                array = np.asarray(image)
    except (OSError, UnidentifiedImageError) as exc:
        raise EvaluationError(f"{path}: cannot read the image ({exc})") from exc
    if mode.startswith("I;16"):
        array = array.astype(np.uint16, copy=False)
    elif mode == "I" and array.size and array.min() >= 0 and array.max() <= 65535:
        array = array.astype(np.uint16)  # some readers give 16-bit PNGs as 32-bit integers
    if array.ndim == 3:
        colour = array[..., :3] if array.shape[2] >= 3 else array[..., :1]
        if not (colour == colour[..., :1]).all():
            raise EvaluationError(
                f"{path}: is a colour image with differing channels (mode {mode}); expected a "
                "single-channel mask or probability map"
            )
        array = np.ascontiguousarray(colour[..., 0])
    if array.ndim != 2:
        raise EvaluationError(f"{path}: expected a 2-D image, found shape {array.shape}")
    return array


def _binary_values(array: np.ndarray) -> bool:
    """True when an integer/bool array holds only {0, 1} or {0, max of its dtype}."""
    if array.dtype == bool:
        return True
    if array.dtype.kind not in "ui":
        return False
    if array.dtype == np.uint8:
        present = np.flatnonzero(np.bincount(array.ravel(), minlength=256))
    else:
        present = np.unique(array)
    top = np.iinfo(array.dtype).max
    return set(present.tolist()) <= {0, 1} or set(present.tolist()) <= {0, int(top)}


def read_binary_mask(path: Path, what: str = "ground-truth mask") -> np.ndarray:
    """A binary mask file as a bool array (non-zero = True); more than two values is an error."""
    array = _read_image(Path(path))
    if array.dtype != bool:
        values = np.unique(array)
        if values.size > 2:
            raise EvaluationError(
                f"{path}: a {what} must be binary, found {values.size} distinct values "
                f"({values.min()}..{values.max()}); save it as 0/255 or 0/1"
            )
    return np.ascontiguousarray(array != 0)


def _squeeze(array: np.ndarray, path: Path) -> np.ndarray:
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise EvaluationError(f"{path}: expected a 2-D map (H, W), found shape {array.shape}")
    return array


def _read_array(path: Path) -> np.ndarray:
    """The array in a ``.npy`` file or ``.npz`` archive, loaded without pickle."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise EvaluationError(f"{path}: cannot read the array ({exc})") from exc
    if isinstance(loaded, np.ndarray):
        return _squeeze(loaded, path)
    with loaded:
        keys = list(loaded.files)
        if len(keys) == 1:
            return _squeeze(loaded[keys[0]], path)
        for key in NPZ_KEYS:
            if key in keys:
                return _squeeze(loaded[key], path)
    raise EvaluationError(
        f"{path}: holds arrays {keys}; expected one array or one named {', '.join(NPZ_KEYS)}"
    )


def read_prediction(path: Path, threshold: float) -> Prediction:
    """Read a prediction file; probability maps are thresholded at ``prob >= threshold``."""
    from vesselctl.metrics.image import threshold_probability

    path = Path(path)
    array = _read_array(path) if path.suffix.lower() in (".npy", ".npz") else _read_image(path)
    if _binary_values(array):
        return Prediction(mask=np.ascontiguousarray(array != 0), prob=None, kind="binary")
    if array.dtype in (np.uint8, np.uint16):
        prob = np.ascontiguousarray(array)
    elif array.dtype.kind == "f":
        prob = np.ascontiguousarray(array, dtype=np.float64)
        if not np.isfinite(prob).all() or prob.min() < 0 or prob.max() > 1:
            raise EvaluationError(
                f"{path}: probabilities must be finite and in [0, 1], found "
                f"{np.nanmin(prob):.4g}..{np.nanmax(prob):.4g}; apply a sigmoid/softmax first"
            )
    else:
        raise EvaluationError(
            f"{path}: values of type {array.dtype} are neither a binary mask (0/1, 0/255) nor "
            "probabilities (uint8, uint16 or float in [0, 1])"
        )
    return Prediction(mask=threshold_probability(prob, threshold), prob=prob, kind="probability")
