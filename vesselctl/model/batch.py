"""The contract between the processor, the model, training and prediction.

The processor turns data records into a ``Sa2VABatch``; ``Sa2VAModel.forward`` takes one and
returns a ``Sa2VAOutput``. Keeping both as plain dataclasses lets training and prediction move a
batch between devices without knowing the model family.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import torch


@dataclass
class SegSample:
    """One model-agnostic training or inference sample, before the processor sees it.

    ``masks[i]`` (H x W, bool) is the target of ``phrases[i]``; each phrase becomes one
    question/answer turn with one [SEG]. ``masks`` is None at inference.
    """

    sample_id: str
    image: np.ndarray  # H x W x 3 uint8 RGB
    phrases: list[str]
    masks: list[np.ndarray] | None = None


@dataclass
class Sa2VABatch:
    """One collated batch of B samples.

    ``gt_masks[i]`` holds the ground-truth masks of sample i in the order of its [SEG] tokens
    (shape [n_seg_i, H_i, W_i], values 0/1); it is None at inference.
    """

    input_ids: torch.Tensor  # [B, T] long, right-padded
    attention_mask: torch.Tensor  # [B, T] long, 1 on real tokens
    labels: torch.Tensor | None  # [B, T] long, -100 on prompt, image and padding tokens
    pixel_values: torch.Tensor  # InternVL: [tiles, 3, 448, 448]; Qwen2.5-VL: [patches, 1176]
    sam2_pixel_values: torch.Tensor  # [B, 3, S, S], normalised for SAM2 (S = 1024 for real SAM2)
    image_grid_thw: torch.Tensor | None = None  # Qwen2.5-VL only: [B, 3]
    gt_masks: list[torch.Tensor] | None = None
    original_sizes: list[tuple[int, int]] = field(default_factory=list)  # (height, width)
    sample_ids: list[str] = field(default_factory=list)
    # Qwen2.5-VL only: [B, T] 1 on image tokens, 0 elsewhere; transformers 5.x builds the 3-D
    # (mrope) positions from it and falls back to wrong 1-D positions without it.
    mm_token_type_ids: torch.Tensor | None = None
    # Where each image sits in SAM2's input (vesselctl.model.tiling.Sam2Frame): the whole
    # S x S for the official square resize, a top-left region for letterbox. Use
    # tiling.sam2_logits_to_image / masks_to_sam2_frame with it. Empty = square.
    sam2_frames: list = field(default_factory=list)
    # Pixel tensors still uint8 (processor option normalise_on_device): field name -> (mean,
    # std). ``to`` normalises them on the target device; None once done.
    deferred_normalisation: dict[str, tuple] | None = None
    # Content keys of the frozen encoders' inputs (model.acceleration.attach_encoder_keys): one
    # per InternVL tile and one per SAM2 image; only read when an encoder cache is enabled.
    vision_keys: list[str] | None = None
    sam2_keys: list[str] | None = None
    # Where the model gathers, found by the processor on the CPU so that the forward needs no
    # GPU -> CPU synchronisation (boolean indexing and .tolist() on GPU tensors stop the CPU
    # until the GPU catches up, leaving the GPU idle while the next kernels are launched):
    # [N, 2] (row, position) of every real [SEG] in sample then position order, the [SEG]
    # count per sample, and [M, 2] (row, t) of every position whose next label is supervised.
    # None: the model finds them itself (batches built by hand).
    seg_positions: torch.Tensor | None = None
    seg_counts: list[int] | None = None
    supervised_positions: torch.Tensor | None = None
    # InternVL: [K, 2] (row, position) of every image-context token in row-major order, the
    # order the image features fill them (transformers' masked_scatter and its token-count
    # check each wait for the GPU; the model puts the features here without waiting).
    image_positions: torch.Tensor | None = None

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Sa2VABatch:
        """Move tensors to ``device``; floating pixel tensors are also cast to ``dtype``.

        Deferred uint8 pixels are moved first (a quarter of the bytes), then normalised there.
        """
        from vesselctl.model.tiling import normalise_tensor

        deferred = self.deferred_normalisation or {}
        moved: dict = {"deferred_normalisation": None}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "deferred_normalisation":
                continue
            if f.name in deferred and isinstance(value, torch.Tensor):
                value = normalise_tensor(value.to(device, non_blocking=True), *deferred[f.name])
                if f.name == "sam2_pixel_values":
                    value = self._zero_letterbox_padding(value)
            if isinstance(value, torch.Tensor):
                cast = dtype if (dtype is not None and value.is_floating_point()) else None
                value = value.to(device=device, dtype=cast) if cast else value.to(device)
            elif f.name == "gt_masks" and value is not None:
                value = [m.to(device) for m in value]
            moved[f.name] = value
        return Sa2VABatch(**moved)

    def _zero_letterbox_padding(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised SAM2 input is 0 outside each image's letterbox content, as in the
        processor's eager path."""
        for row, frame in enumerate(self.sam2_frames):
            height, width = frame.content
            pixels[row, :, height:, :] = 0
            pixels[row, :, :, width:] = 0
        return pixels

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass
class Sa2VAOutput:
    """What a forward pass returns. Loss parts are already weighted: loss = sum of the parts."""

    loss: torch.Tensor | None = None
    loss_mask: torch.Tensor | None = None
    loss_dice: torch.Tensor | None = None
    llm_loss: torch.Tensor | None = None
    mask_logits: list[torch.Tensor] = field(default_factory=list)  # per sample [n_seg_i, 256, 256]
    iou_scores: list[torch.Tensor] = field(default_factory=list)  # per sample [n_seg_i]
