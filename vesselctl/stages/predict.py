"""`vesselctl predict`: masks, probabilities and overlays for any images, in single passes.

Reads top to bottom: find the images, load the model once, then for each group of images build
the views (tiles, mirrored copies), run them through the model in batches, stitch the views back
into one probability map per image at its original size, and write that image's files before
moving on, so a crash loses at most one group and ``--skip-existing`` resumes. Under a launcher
(torchrun, Slurm) every rank predicts its share and rank 0 merges the logs.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from vesselctl.data.images import encode_png, read_image
from vesselctl.data.manifest import is_prepared_dataset, read_manifest
from vesselctl.errors import ConfigError, DatasetError, ModelError
from vesselctl.files import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_jsonl,
    run_provenance,
)
from vesselctl.settings.base import write_resolved_settings
from vesselctl.settings.predict import PredictSettings

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
PREDICTIONS_NAME = "predictions.jsonl"
OVERLAY_COLOUR = (255, 40, 40)
_stderr = Console(stderr=True)


@dataclass(frozen=True)
class PredictItem:
    """One input image: the id its outputs are named by, and where it is read from.

    ``array`` (H x W x 3 uint8) stands in for the file when the image is already in memory.
    """

    id: str
    path: Path | None
    array: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass
class PredictResult:
    """What a predict run did; ``failures`` lists images that could not be read."""

    out_dir: Path
    predicted: int = 0
    skipped: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    device: str = "cpu"
    batch_size: int = 0
    # Where the loop's time went: waiting for loader workers (input-bound when large) and in the
    # model (forward + copying the maps back); the rest is writing files and bookkeeping.
    input_wait_s: float = 0.0
    model_s: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.predicted / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "predicted": self.predicted,
            "skipped": self.skipped,
            "failed": len(self.failures),
            "failures": self.failures,
            "seconds": round(self.seconds, 3),
            "images_per_s": round(self.images_per_s, 3),
            "device": self.device,
            "final_batch_size": self.batch_size,
            "input_wait_s": round(self.input_wait_s, 3),
            "model_s": round(self.model_s, 3),
        }


# --- inputs ---------------------------------------------------------------------------------------


def find_inputs(source: Path, split: str | None) -> list[PredictItem]:
    """An image file, a folder of images (recursive; ids from relative paths) or a prepared set."""
    source = Path(source)
    if source.is_file():
        return [PredictItem(source.stem, source)]
    if not source.is_dir():
        raise DatasetError(f"{source}: no such image or folder; check --input")
    if is_prepared_dataset(source):
        return [PredictItem(r.id, r.image_path(source)) for r in read_manifest(source, split)]
    if split is not None:
        raise ConfigError(
            f"--split {split} needs a prepared dataset but {source} has no manifest.jsonl"
        )
    items: list[PredictItem] = []
    seen: dict[str, Path] = {}
    for path in sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        relative = path.relative_to(source).with_suffix("")
        item_id = "__".join(relative.parts)
        if item_id in seen:
            raise DatasetError(
                f"{path} and {seen[item_id]} both map to output id '{item_id}'; rename one"
            )
        seen[item_id] = path
        items.append(PredictItem(item_id, path))
    if not items:
        raise DatasetError(
            f"{source}: no images found (looked for {', '.join(IMAGE_SUFFIXES)} recursively)"
        )
    return items


def load_rgb(path: Path, uint16_scaling: str = "full_range") -> np.ndarray:
    """Read any supported image as H x W x 3 uint8 RGB, 16-bit images scaled as the model's
    processor says (``ProcessorOptions.uint16_scaling``), grayscale repeated."""
    from vesselctl.model.tiling import to_rgb_uint8

    return to_rgb_uint8(read_image(path), uint16_scaling)  # type: ignore[arg-type]


# --- views: tiles and mirrored copies -------------------------------------------------------------


def window_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``size`` with at least ``overlap``."""
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return starts


def blend_window(height: int, width: int, overlap: int) -> np.ndarray:
    """Weights that fall linearly to the tile edges over the overlap, so seams fade smoothly."""
    ramp = max(overlap, 1)

    def axis(n: int) -> np.ndarray:
        i = np.arange(n, dtype=np.float32)
        return np.minimum(1.0, np.minimum(i + 1, n - i) / (ramp + 1))

    return np.outer(axis(height), axis(width))


@dataclass(frozen=True)
class View:
    """A crop (y0, x0, y1, x1) of one image, optionally mirrored left-right."""

    box: tuple[int, int, int, int]
    flipped: bool


def image_views(height: int, width: int, settings: PredictSettings) -> list[View]:
    """All views of one image: its tiles (or the whole image), each also mirrored with TTA."""
    inference = settings.inference
    if inference.tile_size and max(height, width) > inference.tile_size:
        tile, overlap = inference.tile_size, inference.tile_overlap
        boxes = [
            (y, x, min(y + tile, height), min(x + tile, width))
            for y in window_starts(height, tile, overlap)
            for x in window_starts(width, tile, overlap)
        ]
    else:
        boxes = [(0, 0, height, width)]
    flips = (False, True) if inference.hflip_tta else (False,)
    return [View(box, flip) for box in boxes for flip in flips]


# --- the model ------------------------------------------------------------------------------------


def resolve_device_and_dtype(settings: PredictSettings) -> tuple[Any, Any]:
    """torch device and dtype from the settings ('auto': CUDA + bf16 when available)."""
    import torch

    inference = settings.inference
    device_name = inference.device
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    if device_name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("inference.device is cuda but no GPU is visible; use --device cpu")
    device = torch.device(device_name)
    if device.type == "cuda":
        from vesselctl.training.launch import launcher_env

        dist = launcher_env()
        device = torch.device("cuda", dist.local_rank if dist else torch.cuda.current_device())
    dtype_name = inference.dtype
    if dtype_name == "auto":
        dtype_name = "bfloat16" if device.type == "cuda" else "float32"
    return device, getattr(torch, dtype_name)


def resolve_model_source(settings: PredictSettings, work_dir: Path) -> Any:
    """A loadable model for ``--model``: a model folder as it is, a training checkpoint converted.

    Training checkpoints (official ``iter_N.pth``, DeepSpeed folders, vesselctl ``step_N``) are
    converted and verified by the convert stage into ``work_dir/model`` first, so predict and
    ``evaluate --ckpt`` run exactly the weights ``vesselctl convert`` would produce.
    """
    from vesselctl.model.checkpoints import detect_format
    from vesselctl.settings.convert import ConvertSettings
    from vesselctl.settings.model import ModelSourceSettings

    path = Path(str(settings.model))
    fmt = detect_format(path)
    if fmt == "vesselctl_model":
        return ModelSourceSettings(kind="vesselctl", model_dir=path)
    if fmt == "official_hf":
        return ModelSourceSettings(kind="official_hf", model_dir=path)
    if fmt in ("torch_file", "deepspeed", "vesselctl_train"):
        from vesselctl.stages import convert

        converted = work_dir / "model"
        if not (converted / "config.json").is_file():
            convert.run(
                ConvertSettings(source=path, out=converted, base=settings.base, overwrite=True)
            )
        return ModelSourceSettings(kind="vesselctl", model_dir=converted)
    raise ConfigError(
        f"--model {path}: a '{fmt}' cannot be used for prediction; give a vesselctl model "
        "folder, an official Sa2VA HF export, or a training checkpoint (with --base)"
    )


def load_predictor(
    settings: PredictSettings, out: Path, device: Any, dtype: Any
) -> tuple[Any, Any]:
    """The model (eval mode, on ``device``) and its processor."""
    from vesselctl.model.load import load_model

    model, processor = load_model(resolve_model_source(settings, out))
    model = model.to(device=device, dtype=dtype).eval()
    return model, processor


def _forward(model: Any, batch: Any, device: Any, dtype: Any) -> list[tuple[np.ndarray, float]]:
    """One teacher-forced pass; per view, its probability map (float32, crop-sized) and the
    probability the LLM gives the [SEG] token where the answer places it."""
    import torch

    from vesselctl.model.inference import predict_with_seg_scores

    batch = batch.to(device, dtype)
    with torch.inference_mode():
        maps, scores = predict_with_seg_scores(model, batch)
    return [
        (p[0].float().cpu().numpy(), float(score[0])) for p, score in zip(maps, scores, strict=True)
    ]


def run_views(
    model: Any,
    processor: Any,
    crops: Sequence[np.ndarray],
    prompt: str,
    batch_size: int,
    device: Any,
    dtype: Any,
) -> tuple[list[tuple[np.ndarray, float]], int]:
    """Probabilities for each crop, processed here in batches; on CUDA out-of-memory the batch
    is halved. Returns (probability map, [SEG] token probability) per crop and the batch size
    that worked."""
    import torch

    from vesselctl.model.batch import SegSample

    probs: list[tuple[np.ndarray, float]] = []
    start = 0
    while start < len(crops):
        chunk = crops[start : start + batch_size]
        samples = [SegSample(f"view{start + i}", c, [prompt]) for i, c in enumerate(chunk)]
        try:
            probs.extend(_forward(model, processor(samples, train=False), device, dtype))
        except torch.cuda.OutOfMemoryError as exc:
            torch.cuda.empty_cache()
            if batch_size == 1:
                raise ModelError(
                    "out of GPU memory at batch size 1; use a smaller model, --set "
                    "inference.tile_size=512 for large images, or --device cpu"
                ) from exc
            batch_size = max(1, batch_size // 2)
            _stderr.print(f"out of GPU memory: batch size halved to {batch_size}")
            continue
        start += len(chunk)
    return probs, batch_size


@dataclass
class LoadedImage:
    """One image prepared by a loader worker: its views encoded for the model, or why it could
    not be read."""

    item: PredictItem
    image: np.ndarray | None
    views: list[View]
    encoded: list[Any] = field(default_factory=list)
    error: str | None = None


def view_crops(image: np.ndarray, views: Sequence[View]) -> list[np.ndarray]:
    """The pixels of each view (mirrored where the view says so)."""
    crops = []
    for view in views:
        y0, x0, y1, x1 = view.box
        crop = image[y0:y1, x0:x1]
        crops.append(np.ascontiguousarray(crop[:, ::-1] if view.flipped else crop))
    return crops


class ImageViewsDataset:
    """Reads image i, cuts its views and encodes them (a dataset for torch's DataLoader).

    Work is per image, so every loader worker stays busy whatever the batch size; the cheap
    padding into batches happens in the main process (``Sa2VAProcessor.collate``). Reading and
    the processor's resizing cost tens of milliseconds per image: done here, beside the GPU.
    """

    def __init__(
        self,
        items: Sequence[PredictItem],
        settings: PredictSettings,
        processor: Any,
        encode: bool = True,
    ) -> None:
        self.items, self.settings, self.processor = list(items), settings, processor
        self.encode = encode  # False: the views are encoded on the GPU (collate_group)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> LoadedImage:
        from vesselctl.model.batch import SegSample

        item = self.items[index]
        try:
            if item.array is not None:
                image = item.array
            else:
                scaling = self.processor.options.uint16_scaling
                image = load_rgb(Path(str(item.path)), scaling)
        except (DatasetError, ModelError) as exc:
            return LoadedImage(item, None, [], error=str(exc))
        views = image_views(*image.shape[:2], self.settings)
        if not self.encode:
            return LoadedImage(item, image, views)
        encoded = [
            self.processor.encode(SegSample(f"{item.id}#{i}", crop, [self.settings.prompt]), False)
            for i, crop in enumerate(view_crops(image, views))
        ]
        return LoadedImage(item, image, views, encoded)


def resolve_workers(settings: PredictSettings, device: Any, world: int) -> int:
    """Loader workers: the setting, else ``default_loader_workers`` (none on the CPU, up to 8
    per GPU process)."""
    if settings.inference.workers is not None:
        return settings.inference.workers
    from vesselctl.data.loading import default_loader_workers

    return default_loader_workers(getattr(device, "type", str(device)) == "cuda", world)


def loaded_groups(
    items: Sequence[PredictItem],
    processor: Any,
    settings: PredictSettings,
    workers: int,
    encode: bool = True,
) -> Iterator[list[LoadedImage]]:
    """Groups of ``inference.batch_size`` read (and, with ``encode``, encoded) images, in input
    order."""
    import torch

    dataset = ImageViewsDataset(items, settings, processor, encode)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=None,  # one image per worker task; grouped below
        shuffle=False,
        num_workers=workers,
        prefetch_factor=2 * settings.inference.batch_size // max(workers, 1) + 2
        if workers
        else None,
    )
    group: list[LoadedImage] = []
    for loaded in loader:
        group.append(loaded)
        if len(group) == settings.inference.batch_size:
            yield group
            group = []
    if group:
        yield group


def collate_group(
    processor: Any, loaded: Sequence[LoadedImage], prompt: str | None = None, device: Any = None
) -> Any:
    """One batch of every view of the group's readable images (None when none is readable).

    Views the loader workers did not encode are encoded here from pixels copied to ``device``
    and resized there (``Sa2VAProcessor.encode_pixels``).
    """
    import torch

    readable = [entry for entry in loaded if entry.image is not None]
    encoded = []
    for entry in readable:
        if entry.encoded:
            encoded.extend(entry.encoded)
            continue
        image = np.ascontiguousarray(entry.image)  # torch refuses negative strides
        pixels = torch.from_numpy(image).to(device).permute(2, 0, 1)
        for i, view in enumerate(entry.views):
            y0, x0, y1, x1 = view.box
            crop = pixels[:, y0:y1, x0:x1]
            crop = crop.flip(-1) if view.flipped else crop
            encoded.append(
                processor.encode_pixels(f"{entry.item.id}#{i}", crop.contiguous(), [prompt])
            )
    return processor.collate(encoded, False) if encoded else None


def collated_ahead(
    groups: Iterator[list[LoadedImage]],
    processor: Any,
    device: Any = None,
    dtype: Any = None,
    prompt: str | None = None,
) -> Iterator[tuple[list[LoadedImage], Any]]:
    """``(group, batch)`` pairs, the next group fetched, collated and (on CUDA) put on the GPU
    in a background thread while the caller runs the model on the current one.

    Receiving a group from the loader workers, padding it into a batch and copying its pixels
    to the GPU (or resizing them there) take tens of milliseconds per batch; done in line, the
    GPU would wait for them every batch.
    """
    from concurrent.futures import ThreadPoolExecutor

    stream = None
    if getattr(device, "type", None) == "cuda":
        import torch

        stream = torch.cuda.Stream(device)  # the side stream every batch is built on

    def fetch() -> tuple[list[LoadedImage], Any] | None:
        group = next(groups, None)
        if group is None:
            return None
        if stream is None:
            return group, collate_group(processor, group, prompt, device)
        return group, built_on_gpu(
            lambda: collate_group(processor, group, prompt, device), stream, device, dtype
        )

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vesselctl-collate") as pool:
        upcoming = pool.submit(fetch)
        while (current := upcoming.result()) is not None:
            upcoming = pool.submit(fetch)
            yield current


def built_on_gpu(build: Any, stream: Any, device: Any, dtype: Any) -> Any:
    """The batch ``build()`` collates, on the GPU: built and copied on the side ``stream`` from
    this (background) thread, finished before it is returned. None when the GPU has no room: the
    model loop then collates again and meets the out-of-memory error, which halves the batch."""
    import torch

    try:
        with torch.cuda.stream(stream):
            batch = build()
            moved = batch.to(device, dtype) if batch is not None else None
        stream.synchronize()
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None
    if moved is None:
        return None
    # The caching allocator must not hand these blocks to the side stream again while the
    # model, on the default stream, may still read them.
    main = torch.cuda.default_stream(device)
    for value in vars(moved).values():
        if isinstance(value, torch.Tensor) and value.is_cuda:
            value.record_stream(main)
    return moved


def predict_group(
    model: Any,
    processor: Any,
    loaded: Sequence[LoadedImage],
    settings: PredictSettings,
    device: Any,
    dtype: Any,
    batch: Any = None,
) -> list[tuple[np.ndarray, float]]:
    """Per readable image of one loader group: its probability map (original size) and the mean
    over its views of the probability the LLM gives [SEG] where the answer places it.

    ``batch`` is the group already collated (``collate_group``), if it was done ahead. On CUDA
    out-of-memory the group's views are run again here in smaller batches.
    """
    import torch

    readable = [entry for entry in loaded if entry.image is not None]
    try:
        if batch is None:
            batch = collate_group(processor, loaded, settings.prompt, device)
        probs = _forward(model, batch, device, dtype)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        crops = [c for entry in readable for c in view_crops(entry.image, entry.views)]
        half = max(1, len(crops) // 2)
        _stderr.print(f"out of GPU memory: this group runs again in batches of {half}")
        probs, _ = run_views(model, processor, crops, settings.prompt, half, device, dtype)
    maps, offset = [], 0
    for entry in readable:
        n = len(entry.views)
        height, width = entry.image.shape[:2]  # type: ignore[union-attr]
        views = probs[offset : offset + n]
        prob = stitch(
            entry.views, [p for p, _ in views], height, width, settings.inference.tile_overlap
        )
        maps.append((prob, float(np.mean([score for _, score in views]))))
        offset += n
    return maps


def stitch(
    views: Sequence[View], probs: Sequence[np.ndarray], height: int, width: int, overlap: int
) -> np.ndarray:
    """Weighted average of view probabilities back into one H x W map."""
    if len(views) == 1 and not views[0].flipped:
        return probs[0]
    total = np.zeros((height, width), np.float32)
    weight = np.zeros((height, width), np.float32)
    for view, prob in zip(views, probs, strict=True):
        y0, x0, y1, x1 = view.box
        p = prob[:, ::-1] if view.flipped else prob
        w = blend_window(y1 - y0, x1 - x0, overlap)
        total[y0:y1, x0:x1] += p * w
        weight[y0:y1, x0:x1] += w
    return total / np.maximum(weight, 1e-12)


# --- outputs --------------------------------------------------------------------------------------


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The image with predicted vessel pixels tinted red.

    Pillow's blend and composite run in C without the GIL (about 4x faster than the numpy
    equivalent here), so writer threads do not hold up the thread that feeds the GPU.
    """
    from PIL import Image

    base = Image.fromarray(np.ascontiguousarray(image))
    tint = Image.new("RGB", base.size, OVERLAY_COLOUR)
    blended = Image.blend(base, tint, alpha)
    return np.asarray(Image.composite(blended, base, Image.fromarray(mask.astype(np.uint8) * 255)))


def write_outputs(
    out: Path, item: PredictItem, image: np.ndarray, prob: np.ndarray, settings: PredictSettings
) -> dict[str, Any]:
    """Write one image's mask, probability map and overlay; return its predictions.jsonl record."""
    mask = prob > settings.inference.threshold
    kind = settings.output.probabilities
    if kind == "png":
        atomic_write_bytes(
            out / "probabilities" / f"{item.id}.png",
            encode_png(np.round(prob * 255).astype(np.uint8)),
        )
    elif kind == "npz":
        buffer = io.BytesIO()
        np.savez_compressed(buffer, prob=prob.astype(np.float16))
        atomic_write_bytes(out / "probabilities" / f"{item.id}.npz", buffer.getvalue())
    if settings.output.overlays:
        atomic_write_bytes(out / "overlays" / f"{item.id}.png", encode_png(overlay(image, mask)))
    # The mask is written last: its presence marks the image as done for --skip-existing.
    mask_png = encode_png(mask.astype(np.uint8) * 255, kind="mask")
    atomic_write_bytes(out / "masks" / f"{item.id}.png", mask_png)
    area = int(mask.sum())
    return {
        "id": item.id,
        "source": str(item.path) if item.path is not None else None,
        "height": int(mask.shape[0]),
        "width": int(mask.shape[1]),
        "mask_area": area,
        "mask_fraction": round(area / mask.size, 6),
        "max_probability": round(float(prob.max()), 6),
    }


def prepare_out_dir(out: Path, settings: PredictSettings) -> dict[str, dict[str, Any]]:
    """Check OUT is usable; return the records already there when resuming."""
    out.mkdir(parents=True, exist_ok=True)
    existing = [p for p in out.iterdir() if not p.name.startswith(".")]
    done: dict[str, dict[str, Any]] = {}
    if existing and settings.output.skip_existing:
        log = out / PREDICTIONS_NAME
        if log.is_file():
            for line in log.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash: that image is predicted again
                if (out / "masks" / f"{record['id']}.png").is_file():
                    done[record["id"]] = record
        return done
    if existing and not settings.output.overwrite:
        raise ConfigError(
            f"{out} is not empty; pass --skip-existing to resume, --overwrite to replace it, "
            "or choose another --out"
        )
    return done


# --- the stage ------------------------------------------------------------------------------------


def writer_threads() -> int:
    """Threads that encode and write output PNGs: PNG encoding runs without the GIL, so one per
    two cores up to 8 (about 20 ms of encoding per 512 x 512 image on the 2-core dev machine)."""
    import os

    return max(2, min(8, (os.cpu_count() or 2) // 2))


def predict_items(
    model: Any,
    processor: Any,
    items: Sequence[PredictItem],
    settings: PredictSettings,
    out: Path,
    device: Any,
    dtype: Any,
    workers: int,
    result: PredictResult,
    log: Any = None,
    progress: Any = None,
) -> list[dict[str, Any]]:
    """Predict ``items`` and write their files; returns their predictions.jsonl records.

    Loader workers read and preprocess the next groups while the model runs on this one, and a
    small thread pool encodes and writes PNGs (PNG encoding releases the GIL), so neither the
    CPU side nor the disk holds the GPU up. Unreadable images go to ``result.failures``.
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    records: list[dict[str, Any]] = []
    pending: list[tuple[Future, float, float]] = []

    def finish(future: Future, per_image_s: float, seg_score: float) -> None:
        record = future.result()
        record["time_s"] = round(per_image_s, 4)
        # The answer "Sure, [SEG]." is teacher-forced; this says whether the model would emit it.
        record["seg_token_probability"] = round(seg_score, 6)
        record["seg_predicted"] = seg_score > 0.5
        if log is not None:
            log.write(json.dumps(record) + "\n")
            log.flush()
        records.append(record)
        result.predicted += 1
        if progress is not None:
            progress.advance()

    # uint8 pixels travel to the GPU and are normalised there (same values, less CPU work)
    on_device = processor.replace_options(normalise_on_device=True)
    # On a GPU, InternVL-based models get their images resized there: workers only read files.
    gpu_resize = (
        settings.inference.gpu_preprocessing
        and getattr(device, "type", None) == "cuda"
        and on_device.options.family == "internvl"
    )
    groups = loaded_groups(items, on_device, settings, workers, encode=not gpu_resize)
    with ThreadPoolExecutor(
        max_workers=writer_threads(), thread_name_prefix="vesselctl-write"
    ) as writer:
        ahead = collated_ahead(groups, on_device, device, dtype, settings.prompt)
        while True:
            t_wait = time.perf_counter()
            fetched = next(ahead, None)
            result.input_wait_s += time.perf_counter() - t_wait
            if fetched is None:
                break
            loaded, batch = fetched
            for entry in loaded:
                if entry.error is not None:
                    failure = {"id": entry.item.id, "path": str(entry.item.path)}
                    result.failures.append({**failure, "error": entry.error})
                    if progress is not None:
                        progress.advance()
            readable = [entry for entry in loaded if entry.image is not None]
            if not readable:
                continue
            t0 = time.perf_counter()
            maps = predict_group(model, on_device, loaded, settings, device, dtype, batch)
            result.model_s += time.perf_counter() - t0
            per_image_s = (time.perf_counter() - t0) / len(readable)
            for entry, (prob, seg_score) in zip(readable, maps, strict=True):
                future = writer.submit(write_outputs, out, entry.item, entry.image, prob, settings)
                pending.append((future, per_image_s, seg_score))
            # Keep at most two groups of files in flight, so memory stays bounded.
            while len(pending) > 2 * settings.inference.batch_size:
                finish(*pending.pop(0))
        for future, per_image_s, seg_score in pending:
            finish(future, per_image_s, seg_score)
    result.batch_size = settings.inference.batch_size
    return records


def run(settings: PredictSettings) -> PredictResult:
    """Predict every input image and write masks, probabilities, overlays and predictions.jsonl."""
    from vesselctl.training.launch import launcher_env

    out = Path(str(settings.out))  # input, out and model are required by PredictSettings
    dist = launcher_env()
    if dist is None and settings.inference.gpus > 1:
        return _relaunch(settings, out)
    rank, world = (dist.rank, dist.world_size) if dist else (0, 1)

    # 1. Inputs first: a typo in --input fails before the model is loaded.
    items = find_inputs(Path(str(settings.input)), settings.split)
    done = prepare_out_dir(out, settings) if rank == 0 else {}
    if world > 1:
        import torch.distributed as torch_dist

        torch_dist.init_process_group("nccl" if _cuda() else "gloo")
        shared = [done]
        torch_dist.broadcast_object_list(shared, src=0)  # every rank skips the same images
        done = shared[0]
    todo = [item for item in items if item.id not in done][rank::world]

    # 2. The model, once.
    device, dtype = resolve_device_and_dtype(settings)
    model, processor = load_predictor(settings, out, device, dtype)

    # 3. Predict and write every image (loader workers read, a thread pool writes).
    result = PredictResult(out_dir=out, skipped=len(done), device=str(device))
    log_path = out / (PREDICTIONS_NAME if world == 1 else f".predictions.rank{rank}.jsonl")
    progress = _progress(settings, len(todo), rank)
    workers = resolve_workers(settings, device, world)
    started = time.perf_counter()
    with open(log_path, "a", encoding="utf-8") as log:
        records = predict_items(
            model, processor, todo, settings, out, device, dtype, workers, result, log, progress
        )
    progress.close()
    result.seconds = time.perf_counter() - started
    records = list(done.values()) + records

    # 4. Merge rank logs, then describe the run. result.json is written last: it marks completion.
    if world > 1:
        records, result = _gather(out, rank, world, records, result)
        if rank != 0:
            return result
    atomic_write_jsonl(out / PREDICTIONS_NAME, sorted(records, key=lambda r: r["id"]))
    write_resolved_settings(settings, out)
    atomic_write_json(out / "run_info.json", run_provenance(include_gpus=True))
    atomic_write_json(out / "result.json", result.to_json())
    return result


def _relaunch(settings: PredictSettings, out: Path) -> PredictResult:
    """Run this prediction as ``inference.gpus`` torchrun processes; read back rank 0's result."""
    from vesselctl.settings.train import DistributedSettings
    from vesselctl.training.launch import relaunch

    prepare_out_dir(out, settings)  # refuse a bad --out before starting processes
    settings_file = out / ".predict_launch.yaml"
    # The workers must not refuse the folder this process has just checked.
    output = settings.output.model_copy(update={"skip_existing": True, "overwrite": False})
    write_resolved_settings(settings.model_copy(update={"output": output}), out, settings_file.name)
    code = relaunch(DistributedSettings(gpus=settings.inference.gpus), settings_file, "predict")
    settings_file.unlink(missing_ok=True)
    result_file = out / "result.json"
    if code != 0 or not result_file.is_file():
        raise ModelError(
            f"predict on {settings.inference.gpus} GPUs failed (torchrun exit code {code}); "
            "the workers' messages are above"
        )
    summary = json.loads(result_file.read_text(encoding="utf-8"))
    return PredictResult(
        out_dir=out,
        predicted=summary["predicted"],
        skipped=summary["skipped"],
        failures=summary["failures"],
        seconds=summary["seconds"],
        device=summary["device"],
        batch_size=summary["final_batch_size"],
        input_wait_s=summary["input_wait_s"],
        model_s=summary["model_s"],
    )


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _gather(
    out: Path, rank: int, world: int, records: list[dict[str, Any]], result: PredictResult
) -> tuple[list[dict[str, Any]], PredictResult]:
    """Collect every rank's records and counts on rank 0 (object all-gather)."""
    import torch.distributed as torch_dist

    gathered: list[Any] = [None] * world
    torch_dist.all_gather_object(gathered, (records, result.to_json()))
    torch_dist.destroy_process_group()
    if rank != 0:
        return records, result
    merged: dict[str, dict[str, Any]] = {}
    failures: list[dict[str, str]] = []
    predicted = 0
    slowest = 0.0
    for rank_records, summary in gathered:
        result.input_wait_s = max(result.input_wait_s, summary["input_wait_s"])
        result.model_s = max(result.model_s, summary["model_s"])
        merged.update({r["id"]: r for r in rank_records})
        failures.extend(summary["failures"])
        predicted += summary["predicted"]
        slowest = max(slowest, summary["seconds"])
    for path in out.glob(".predictions.rank*.jsonl"):
        path.unlink()
    result.predicted, result.failures, result.seconds = predicted, failures, slowest
    return list(merged.values()), result


class _Progress:
    """A rich progress bar on an interactive terminal for rank 0; silent otherwise."""

    def __init__(self, total: int, enabled: bool) -> None:
        self._bar = None
        if enabled:
            from rich.progress import Progress

            self._bar = Progress(transient=False)
            self._bar.start()
            self._task = self._bar.add_task("predicting", total=total)

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.advance(self._task)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _progress(settings: PredictSettings, total: int, rank: int) -> _Progress:
    import sys

    return _Progress(total, settings.progress and rank == 0 and sys.stderr.isatty())
