"""``Sa2VAProcessor``: SegSample records -> one collated ``Sa2VABatch``.

Per sample: the MLLM's image input (InternVL tiles or the Qwen2.5-VL pixel budget), SAM2's
input, and one multi-turn conversation (one question per phrase, one [SEG] per answer, the image
in the first turn only) tokenised segment by segment as Sa2VA does, with labels -100 everywhere
except the answers and their end suffix. Samples are right-padded into a batch.

The processor holds only plain options and the tokenizer, so it pickles into DataLoader workers:
``DataLoader(dataset, collate_fn=partial(processor, train=True), num_workers=N)`` processes
batches in the workers.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vesselctl.errors import ModelError
from vesselctl.model.batch import Sa2VABatch, SegSample
from vesselctl.model.templates import (
    DEFAULT_ANSWER_TEMPLATES,
    DEFAULT_QUESTION_TEMPLATES,
    SEG_TOKEN,
    build_turns,
    check_prompt_templates,
    conversation_segments,
    get_chat_template,
)
from vesselctl.model.tiling import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INTERNVL_IMG_CONTEXT,
    INTERNVL_IMG_END,
    INTERNVL_IMG_START,
    QWEN_IMAGE_PAD,
    QWEN_VISION_END,
    QWEN_VISION_START,
    SAM2_MEAN,
    SAM2_STD,
    Sam2Frame,
    internvl_pixel_values,
    internvl_tiles_tensor,
    internvl_tokens_per_tile,
    qwen_image_processor,
    qwen_pixel_values,
    sam2_pixel_values,
    sam2_pixels_tensor,
    to_rgb_uint8,
)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from vesselctl.model.config import Sa2VAConfig

IGNORE_INDEX = -100
PROCESSOR_FILE = "processor_config.json"
_FORMAT_VERSION = 1
FAMILIES = ("internvl", "qwen2_5_vl")


@dataclass
class ProcessorOptions:
    """Everything the processor does besides the tokenizer; saved as ``processor_config.json``.

    Sizes come from the model config (``from_config``) so no 448/1024 is hard-coded; the
    defaults are those of the released Sa2VA models.
    """

    family: str = "internvl"  # internvl | qwen2_5_vl
    template: str = "qwen_chat"  # qwen_chat | phi3_chat | qwen2_5_vl
    seg_token: str = SEG_TOKEN
    # InternVL dynamic tiling
    tile_size: int = 448
    patch_size: int = 14
    downsample_ratio: float = 0.5
    min_tiles: int = 1
    max_tiles: int = 12
    use_thumbnail: bool = True
    # Qwen2.5-VL pixel budget (Sa2VA's single-image budget: 512..2048 merged 28x28 patches)
    min_pixels: int = 512 * 28 * 28
    max_pixels: int = 2048 * 28 * 28
    merge_size: int = 2
    temporal_patch_size: int = 2
    # SAM2 input
    sam2_size: int = 1024
    sam2_resize: str = "square"  # square (official) | letterbox (keeps the aspect ratio)
    # Text
    image_separator: str | None = None  # after the image tokens; None = the template's
    question_templates: list[str] = field(default_factory=lambda: list(DEFAULT_QUESTION_TEMPLATES))
    answer_templates: list[str] = field(default_factory=lambda: list(DEFAULT_ANSWER_TEMPLATES))
    max_length: int = 8192
    uint16_scaling: str = "full_range"  # full_range (/257) | image_max
    # InternVL tiles and SAM2 input stay uint8 in the batch; Sa2VABatch.to() normalises them on
    # the target device (same values; 4x less CPU work and host-to-device traffic).
    normalise_on_device: bool = False

    def check(self) -> None:
        """Raise ModelError naming the option for any value that cannot work."""
        if self.family not in FAMILIES:
            raise ModelError(f"processor family is '{self.family}'; expected one of {FAMILIES}")
        get_chat_template(self.template)
        check_prompt_templates(self.question_templates, self.answer_templates, self.seg_token)
        if self.sam2_resize not in ("square", "letterbox"):
            raise ModelError(
                f"processor sam2_resize is '{self.sam2_resize}'; expected 'square' or 'letterbox'"
            )
        if self.uint16_scaling not in ("full_range", "image_max"):
            raise ModelError(
                f"processor uint16_scaling is '{self.uint16_scaling}'; "
                "expected 'full_range' or 'image_max'"
            )
        for name in ("sam2_size", "max_length", "tile_size", "patch_size"):
            if getattr(self, name) < 1:
                raise ModelError(f"processor {name} is {getattr(self, name)}; it must be >= 1")
        if self.family == "internvl":
            internvl_tokens_per_tile(self.tile_size, self.patch_size, self.downsample_ratio)
            if not 1 <= self.min_tiles <= self.max_tiles:
                raise ModelError(
                    f"processor min_tiles {self.min_tiles} / max_tiles {self.max_tiles}: "
                    "need 1 <= min_tiles <= max_tiles"
                )
        elif not 0 < self.min_pixels <= self.max_pixels:
            raise ModelError(
                f"processor min_pixels {self.min_pixels} / max_pixels {self.max_pixels}: "
                "need 0 < min_pixels <= max_pixels"
            )

    @classmethod
    def from_config(cls, config: Sa2VAConfig, **overrides: Any) -> ProcessorOptions:
        """Options whose sizes and template are read from a ``Sa2VAConfig``."""
        vision = config.mllm_config.vision_config
        values: dict[str, Any] = dict(
            family=config.family,
            template=config.template,
            seg_token=config.seg_token,
            sam2_size=int(config.sam2_image_size),
            patch_size=int(_first(vision.patch_size)),
        )
        if config.family == "internvl":
            values["tile_size"] = int(_first(vision.image_size))
            values["downsample_ratio"] = float(config.mllm_config.downsample_ratio)
        else:
            values["merge_size"] = int(vision.spatial_merge_size)
            values["temporal_patch_size"] = int(vision.temporal_patch_size)
        values.update(overrides)
        return cls(**values)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "options") -> ProcessorOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(
                f"{source}: unknown processor option(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}"
            )
        return cls(**data)


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list | tuple) else value


@dataclass
class EncodedSample:
    """One processed sample before collation (``Sa2VAProcessor.encode`` -> ``collate``)."""

    input_ids: list[int]
    labels: list[int]
    mm_token_type_ids: list[int] | None
    pixel_values: torch.Tensor
    image_grid_thw: torch.Tensor | None
    sam2_pixel_values: torch.Tensor
    sam2_frame: Sam2Frame
    gt_masks: torch.Tensor | None
    original_size: tuple[int, int]
    sample_id: str


class Sa2VAProcessor:
    """Turns ``SegSample`` lists into ``Sa2VABatch``es for one model family and template.

    ``Sa2VAProcessor(tokenizer, config)`` reads sizes from a ``Sa2VAConfig``;
    ``Sa2VAProcessor(tokenizer, ProcessorOptions(...))`` or keyword overrides set them directly.
    The tokenizer must already hold Sa2VA's tokens (``add_sa2va_tokens``).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        config: Sa2VAConfig | ProcessorOptions | None = None,
        **overrides: Any,
    ) -> None:
        ProcessorOptions.from_dict(overrides, source="Sa2VAProcessor arguments")  # names only
        if config is None:
            options = ProcessorOptions(**overrides)
        elif isinstance(config, ProcessorOptions):
            options = ProcessorOptions(**{**asdict(config), **overrides})
        else:
            options = ProcessorOptions.from_config(config, **overrides)
        options.check()
        self.options = options
        self.tokenizer = tokenizer
        self.template = get_chat_template(options.template)
        if tokenizer.pad_token_id is None:
            raise ModelError(
                f"tokenizer ({type(tokenizer).__name__}) has no pad token; set one "
                "(Qwen tokenizers use '<|endoftext|>') before building the processor"
            )
        image_tokens = (
            (INTERNVL_IMG_START, INTERNVL_IMG_CONTEXT, INTERNVL_IMG_END)
            if options.family == "internvl"
            else (QWEN_VISION_START, QWEN_IMAGE_PAD, QWEN_VISION_END)
        )
        from vesselctl.model.tokenizer import token_ids

        ids = token_ids(tokenizer, [options.seg_token, *image_tokens])
        self.seg_token_id = ids[options.seg_token]
        self.image_token = image_tokens[1]
        self.image_token_id = ids[image_tokens[1]]
        self._image_open, self._image_close = image_tokens[0], image_tokens[2]
        if config is not None and not isinstance(config, ProcessorOptions):
            self._check_against_config(config)
        self._qwen = None
        if options.family == "qwen2_5_vl":
            self._qwen = qwen_image_processor(
                options.min_pixels,
                options.max_pixels,
                options.patch_size,
                options.merge_size,
                options.temporal_patch_size,
            )

    def replace_options(self, **changes: Any) -> Sa2VAProcessor:
        """A copy of this processor with some options changed (same tokenizer)."""
        return Sa2VAProcessor(self.tokenizer, self.options, **changes)

    @classmethod
    def from_config(
        cls, config: Sa2VAConfig, tokenizer: PreTrainedTokenizerBase, **overrides: Any
    ) -> Sa2VAProcessor:
        """The processor for a model config (sizes, template, token ids checked against it)."""
        return cls(tokenizer, config, **overrides)

    def _check_against_config(self, config: Sa2VAConfig) -> None:
        if self.seg_token_id != config.seg_token_id:
            raise ModelError(
                f"tokenizer gives {self.options.seg_token} id {self.seg_token_id} but the model "
                f"config expects {config.seg_token_id}; use the tokenizer saved with the model"
            )
        if self.image_token_id != config.image_token_id:
            raise ModelError(
                f"tokenizer gives {self.image_token} id {self.image_token_id} but the model "
                f"config expects {config.image_token_id}; use the tokenizer saved with the model"
            )

    # --- per-image helpers ------------------------------------------------------------------

    @property
    def tokens_per_tile(self) -> int:
        """InternVL: ``<IMG_CONTEXT>`` tokens per tile."""
        o = self.options
        return internvl_tokens_per_tile(o.tile_size, o.patch_size, o.downsample_ratio)

    def image_inputs(self, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """MLLM pixels of one RGB uint8 image: (pixel_values, grid_thw or None, image tokens)."""
        o = self.options
        if o.family == "internvl":
            pixels = internvl_pixel_values(
                image,
                o.tile_size,
                o.min_tiles,
                o.max_tiles,
                o.use_thumbnail,
                defer_normalisation=o.normalise_on_device,
            )
            return pixels, None, int(pixels.shape[0]) * self.tokens_per_tile
        pixels, grid = qwen_pixel_values(image, self._qwen)
        return pixels, grid, int(grid.prod()) // (o.merge_size**2)

    # --- text -------------------------------------------------------------------------------

    def encode_conversation(
        self,
        phrases: Sequence[str],
        n_image_tokens: int,
        rng: random.Random | None = None,
        prompt_only: bool = False,
    ) -> tuple[list[int], list[int]]:
        """Token ids and labels of one conversation over ``phrases``.

        Each segment is encoded on its own (as Sa2VA does), with the image placeholder written
        as one context token and expanded to ``n_image_tokens`` copies afterwards; special
        tokens split the text anyway, so this equals encoding the expanded string.
        """
        o = self.options
        for i, phrase in enumerate(phrases):
            for marker in (o.seg_token, self.image_token, self._image_open, self._image_close):
                if marker in phrase:
                    raise ModelError(
                        f"phrase {i} {phrase!r} contains the special token {marker!r}; "
                        "remove it from the phrase"
                    )
        turns = build_turns(phrases, o.question_templates, o.answer_templates, rng)
        separator = (
            self.template.image_separator if o.image_separator is None else o.image_separator
        )
        image_text = self._image_open + self.image_token + self._image_close + separator
        input_ids: list[int] = []
        labels: list[int] = []
        segments = conversation_segments(turns, self.template, image_text, not prompt_only)
        for segment in segments:
            ids = self.tokenizer.encode(segment.text, add_special_tokens=False)
            input_ids += ids
            labels += ids if segment.supervised else [IGNORE_INDEX] * len(ids)
        if phrases:
            where = [i for i, t in enumerate(input_ids) if t == self.image_token_id]
            if len(where) != 1:
                raise ModelError(
                    f"conversation holds {len(where)} {self.image_token} placeholders; "
                    "expected exactly 1 (check the chat template and prompt templates)"
                )
            at = where[0]
            input_ids[at : at + 1] = [self.image_token_id] * n_image_tokens
            labels[at : at + 1] = [IGNORE_INDEX] * n_image_tokens
        return input_ids, labels

    # --- one sample, then the batch ---------------------------------------------------------

    def _encode_sample(
        self, sample: SegSample, train: bool, rng: random.Random | None, prompt_only: bool
    ) -> EncodedSample:
        import torch

        o = self.options
        image = to_rgb_uint8(sample.image, o.uint16_scaling)  # type: ignore[arg-type]
        height, width = image.shape[:2]
        if not sample.phrases:
            raise ModelError(
                f"sample {sample.sample_id}: no phrases; each sample needs at least one phrase "
                "(one [SEG] per phrase)"
            )
        if prompt_only and (train or len(sample.phrases) != 1):
            raise ModelError(
                f"sample {sample.sample_id}: prompt_only (generation) needs train=False and "
                f"exactly one phrase, found train={train} and {len(sample.phrases)} phrases; "
                "put each phrase in its own sample"
            )
        gt_masks = None
        if train:
            if sample.masks is None or len(sample.masks) != len(sample.phrases):
                found = "no masks" if sample.masks is None else f"{len(sample.masks)} masks"
                raise ModelError(
                    f"sample {sample.sample_id}: {len(sample.phrases)} phrases but {found}; "
                    "training needs one mask per phrase"
                )
            stacked = []
            for i, mask in enumerate(sample.masks):
                mask = np.asarray(mask)
                if mask.shape != (height, width):
                    raise ModelError(
                        f"sample {sample.sample_id}: mask {i} has shape {mask.shape}, the image "
                        f"is {height} x {width}; masks must match the image size"
                    )
                stacked.append(mask.astype(bool))
            gt_masks = torch.from_numpy(np.stack(stacked)).to(torch.float32)

        pixel_values, grid, n_image_tokens = self.image_inputs(image)
        sam2_pixels, frame = sam2_pixel_values(
            image,
            o.sam2_size,
            o.sam2_resize,  # type: ignore[arg-type]
            defer_normalisation=o.normalise_on_device,
        )
        # Training draws templates at random: from ``rng`` when given, else from Python's
        # ``random`` module, which DataLoader re-seeds in every worker. Inference: first ones.
        chooser: Any = None if not train else (rng if rng is not None else random)
        return self._with_text(
            sample.sample_id,
            sample.phrases,
            chooser,
            prompt_only,
            EncodedSample(
                input_ids=[],
                labels=[],
                mm_token_type_ids=None,
                pixel_values=pixel_values,
                image_grid_thw=grid,
                sam2_pixel_values=sam2_pixels,
                sam2_frame=frame,
                gt_masks=gt_masks,
                original_size=(height, width),
                sample_id=sample.sample_id,
            ),
            n_image_tokens,
        )

    def _with_text(
        self,
        sample_id: str,
        phrases: Sequence[str],
        chooser: Any,
        prompt_only: bool,
        encoded: EncodedSample,
        n_image_tokens: int,
    ) -> EncodedSample:
        """``encoded`` with the conversation's token ids and labels filled in."""
        input_ids, labels = self.encode_conversation(phrases, n_image_tokens, chooser, prompt_only)
        input_ids, labels = self._fit_length(sample_id, input_ids, labels, n_image_tokens)
        encoded.input_ids, encoded.labels = input_ids, labels
        if self.options.family == "qwen2_5_vl":
            encoded.mm_token_type_ids = [1 if t == self.image_token_id else 0 for t in input_ids]
        return encoded

    def encode_pixels(
        self, sample_id: str, pixels: torch.Tensor, phrases: Sequence[str]
    ) -> EncodedSample:
        """Inference encoding of an image already in a [3, H, W] uint8 tensor on any device,
        resized where it lies (InternVL family): on a GPU this takes the PIL resizes off the
        CPU. Pixels stay uint8 (normalised by ``Sa2VABatch.to``); the resize matches PIL's
        within one grey level (``tiling.resize_like_pil``)."""
        import torch

        o = self.options
        if o.family != "internvl":
            raise ModelError(
                f"encode_pixels resizes for the InternVL family only; this processor is "
                f"{o.family}: use encode() with a numpy image"
            )
        if pixels.dtype != torch.uint8 or pixels.ndim != 3 or pixels.shape[0] != 3:
            raise ModelError(
                f"sample {sample_id}: encode_pixels needs [3, H, W] uint8 pixels, found "
                f"{tuple(pixels.shape)} {pixels.dtype}"
            )
        if not phrases:
            raise ModelError(f"sample {sample_id}: no phrases; each sample needs at least one")
        tiles = internvl_tiles_tensor(
            pixels, o.tile_size, o.min_tiles, o.max_tiles, o.use_thumbnail
        )
        sam2_pixels, frame = sam2_pixels_tensor(pixels, o.sam2_size, o.sam2_resize)  # type: ignore[arg-type]
        encoded = EncodedSample(
            input_ids=[],
            labels=[],
            mm_token_type_ids=None,
            pixel_values=tiles,
            image_grid_thw=None,
            sam2_pixel_values=sam2_pixels,
            sam2_frame=frame,
            gt_masks=None,
            original_size=(int(pixels.shape[1]), int(pixels.shape[2])),
            sample_id=sample_id,
        )
        n_image_tokens = int(tiles.shape[0]) * self.tokens_per_tile
        return self._with_text(sample_id, phrases, None, False, encoded, n_image_tokens)

    def _fit_length(
        self, sample_id: str, input_ids: list[int], labels: list[int], n_image_tokens: int
    ) -> tuple[list[int], list[int]]:
        """Cut to max_length only past the last [SEG]; refuse to cut image tokens or a [SEG]."""
        limit = self.options.max_length
        if len(input_ids) <= limit:
            return input_ids, labels
        last_needed = max(
            i for i, t in enumerate(input_ids) if t in (self.seg_token_id, self.image_token_id)
        )
        if last_needed >= limit:
            n_seg = input_ids.count(self.seg_token_id)
            raise ModelError(
                f"sample {sample_id}: {len(input_ids)} tokens ({n_image_tokens} image tokens, "
                f"{n_seg} [SEG]) exceed max_length {limit} and cutting would drop image tokens "
                "or a [SEG]; raise max_length, lower max_tiles / max_pixels, or use fewer "
                "phrases per image"
            )
        return input_ids[:limit], labels[:limit]

    def __call__(
        self,
        samples: Sequence[SegSample],
        train: bool = True,
        rng: random.Random | None = None,
        prompt_only: bool = False,
    ) -> Sa2VABatch:
        """Process and collate ``samples`` (right padding).

        ``train=True``: labels supervise only the answers + suffix, question/answer templates
        are drawn at random (``rng``, else Python's ``random`` which DataLoader seeds per
        worker), masks are required. ``train=False``: first templates, the answer still
        appended for the teacher-forced single pass, ``labels`` and ``gt_masks`` None.
        ``prompt_only=True`` (with ``train=False``, one phrase per sample): the text ends with
        the assistant header, for ``generate``-style inference.
        """
        if not samples:
            raise ModelError("processor called with no samples; a batch needs at least one")
        encoded = [self._encode_sample(s, train, rng, prompt_only) for s in samples]
        return self.collate(encoded, train)

    def encode(
        self,
        sample: SegSample,
        train: bool = True,
        rng: random.Random | None = None,
        prompt_only: bool = False,
    ) -> EncodedSample:
        """Process one sample without collating: the expensive part, which loader workers can
        do image by image before ``collate`` pads a batch together."""
        return self._encode_sample(sample, train, rng, prompt_only)

    def collate(self, encoded: Sequence[EncodedSample], train: bool) -> Sa2VABatch:
        """Pad and stack encoded samples into one batch (right padding)."""
        import torch

        if not encoded:
            raise ModelError("collate called with no samples; a batch needs at least one")
        length = max(len(e.input_ids) for e in encoded)
        batch_size = len(encoded)
        input_ids = torch.full((batch_size, length), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch_size, length), dtype=torch.long)
        labels = torch.full((batch_size, length), IGNORE_INDEX, dtype=torch.long)
        mm_types = None
        if self.options.family == "qwen2_5_vl":
            mm_types = torch.zeros((batch_size, length), dtype=torch.long)
        for row, e in enumerate(encoded):
            n = len(e.input_ids)
            input_ids[row, :n] = torch.tensor(e.input_ids, dtype=torch.long)
            attention_mask[row, :n] = 1
            labels[row, :n] = torch.tensor(e.labels, dtype=torch.long)
            if mm_types is not None:
                mm_types[row, :n] = torch.tensor(e.mm_token_type_ids, dtype=torch.long)
        grids = [e.image_grid_thw for e in encoded]
        seg = (input_ids == self.seg_token_id) & attention_mask.bool()
        supervised = (labels[:, 1:] != IGNORE_INDEX).nonzero() if train else None
        return Sa2VABatch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            labels=labels if train else None,
            pixel_values=torch.cat([e.pixel_values for e in encoded], dim=0),
            sam2_pixel_values=torch.stack([e.sam2_pixel_values for e in encoded]),
            image_grid_thw=torch.stack(grids) if grids[0] is not None else None,  # type: ignore[arg-type]
            gt_masks=[e.gt_masks for e in encoded] if train else None,  # type: ignore[misc]
            original_sizes=[e.original_size for e in encoded],
            sample_ids=[e.sample_id for e in encoded],
            mm_token_type_ids=mm_types,
            sam2_frames=[e.sam2_frame for e in encoded],
            deferred_normalisation=self._deferred_normalisation(),
            seg_positions=seg.nonzero(),
            seg_counts=seg.sum(dim=1).tolist(),
            supervised_positions=supervised,
            image_positions=(input_ids == self.image_token_id).nonzero()
            if self.options.family == "internvl"
            else None,
        )

    def _deferred_normalisation(self) -> dict[str, tuple] | None:
        """Mean/std per pixel tensor that ``Sa2VABatch.to`` still has to apply, if any."""
        if not self.options.normalise_on_device:
            return None
        deferred: dict[str, tuple] = {"sam2_pixel_values": (SAM2_MEAN, SAM2_STD)}
        if self.options.family == "internvl":
            deferred["pixel_values"] = (IMAGENET_MEAN, IMAGENET_STD)
        return deferred

    # --- files --------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``processor_config.json`` (atomically) and the tokenizer files to ``directory``."""
        from vesselctl.files import atomic_write_json

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(directory)
        payload = {
            "processor_class": type(self).__name__,
            "format_version": _FORMAT_VERSION,
            **asdict(self.options),
        }
        atomic_write_json(directory / PROCESSOR_FILE, payload)

    @classmethod
    def from_pretrained(cls, directory: str | Path, **overrides: Any) -> Sa2VAProcessor:
        """Load a processor saved by ``save_pretrained`` (options + tokenizer), offline."""
        from transformers import AutoTokenizer, PretrainedConfig

        directory = Path(directory)
        path = directory / PROCESSOR_FILE
        if not path.is_file():
            raise ModelError(
                f"{directory}: no {PROCESSOR_FILE}; expected a directory written by "
                "Sa2VAProcessor.save_pretrained (or a vesselctl model directory)"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"{path}: cannot read processor options ({exc})") from exc
        found = data.get("processor_class") if isinstance(data, dict) else None
        if found != cls.__name__:
            raise ModelError(f"{path}: processor_class is {found!r}; expected '{cls.__name__}'")
        version = data.pop("format_version", None)
        if version != _FORMAT_VERSION:
            raise ModelError(
                f"{path}: format_version is {version!r}; this vesselctl reads {_FORMAT_VERSION}"
            )
        data.pop("processor_class")
        options = ProcessorOptions.from_dict(data, source=str(path))
        # A generic config stops AutoTokenizer from reading the directory's config.json (a Sa2VA
        # model config it does not know); the class comes from tokenizer_config.json.
        tokenizer = AutoTokenizer.from_pretrained(
            directory, config=PretrainedConfig(), local_files_only=True
        )
        return cls(tokenizer, options, **overrides)

    def __repr__(self) -> str:
        o = self.options
        return (
            f"Sa2VAProcessor(family={o.family}, template={o.template}, "
            f"sam2={o.sam2_size}/{o.sam2_resize}, tokenizer={len(self.tokenizer)} tokens)"
        )
