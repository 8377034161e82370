"""Sa2VA's training losses: point-sampled sigmoid BCE and Dice on SAM2's mask logits, plus the
LLM's next-token cross-entropy.

The point sampling is Mask2Former's importance sampling (oversample candidates uniformly, keep
the most uncertain ones, top up with uniform points). It is written here by hand because
detectron2/mmdet, where the reference implementations live, are not dependencies; it uses
``torch.nn.functional.grid_sample`` exactly as their ``point_sample`` does (align_corners=False).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class MaskLossParts:
    """Weighted mask losses; ``loss_mask`` and ``loss_dice`` already carry their weights."""

    loss_mask: torch.Tensor
    loss_dice: torch.Tensor


def point_sample(inputs: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample ``inputs`` [N, C, H, W] at ``coords`` [N, P, 2] in [0, 1] (x, y).

    Returns [N, C, P]. Coordinates are pixel-area normalised (align_corners=False), as in
    detectron2's ``point_sample``.
    """
    grid = 2.0 * coords.unsqueeze(2) - 1.0  # [N, P, 1, 2] in [-1, 1]
    sampled = F.grid_sample(inputs, grid.to(inputs.dtype), mode="bilinear", align_corners=False)
    return sampled.squeeze(3)


def uncertain_point_coords(
    logits: torch.Tensor,
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Mask2Former's point choice on mask ``logits`` [N, 1, H, W] -> coords [N, num_points, 2].

    ``oversample_ratio * num_points`` uniform candidates are scored by uncertainty
    (-|logit|); the ``importance_sample_ratio`` most uncertain are kept and the rest of the
    budget is filled with fresh uniform points.
    """
    candidates, extra, num_uncertain = _draw_points(
        logits.shape[0],
        logits.device,
        num_points,
        oversample_ratio,
        importance_sample_ratio,
        generator,
    )
    return _most_uncertain(logits, candidates, extra, num_uncertain)


def _draw_points(
    n: int,
    device: torch.device,
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """The uniform candidates and the uniform top-up points, drawn in that order (the random
    part of the point choice, kept outside any compiled region so that compiled and eager runs
    draw the same points)."""
    num_sampled = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    candidates = torch.rand(n, num_sampled, 2, device=device, generator=generator)
    num_random = num_points - num_uncertain
    extra = None
    if num_random > 0:
        extra = torch.rand(n, num_random, 2, device=device, generator=generator)
    return candidates, extra, num_uncertain


def _most_uncertain(
    logits: torch.Tensor, candidates: torch.Tensor, extra: torch.Tensor | None, num_uncertain: int
) -> torch.Tensor:
    """The ``num_uncertain`` candidates with the smallest |logit|, then the ``extra`` points."""
    with torch.no_grad():
        candidate_logits = point_sample(logits.detach().float(), candidates)  # [N, 1, S]
        uncertainty = -candidate_logits.abs()[:, 0, :]
        top = torch.topk(uncertainty, k=num_uncertain, dim=1).indices  # [N, num_uncertain]
        chosen = torch.gather(candidates, 1, top.unsqueeze(-1).expand(-1, -1, 2))
        return chosen if extra is None else torch.cat([chosen, extra], dim=1)


def resize_masks_nearest(masks: torch.Tensor, size: int) -> torch.Tensor:
    """Resize 0/1 masks [N, H, W] to [N, size, size] with nearest neighbour (as Sa2VA does)."""
    if masks.shape[-2:] == (size, size):
        return masks.float()
    return F.interpolate(masks[:, None].float(), size=(size, size), mode="nearest")[:, 0]


def dice_loss(pred_logits: torch.Tensor, targets: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Mean over masks of ``1 - (2 sum(p t) + eps) / (sum(p) + sum(t) + eps)``, p = sigmoid.

    Inputs are [N, P] point samples; ``eps`` = 1 as in Sa2VA's naive Dice.
    """
    probs = pred_logits.sigmoid()
    numerator = 2.0 * (probs * targets).sum(-1) + eps
    denominator = probs.sum(-1) + targets.sum(-1) + eps
    return (1.0 - numerator / denominator).mean()


def mask_losses(
    mask_logits: torch.Tensor,
    gt_masks: torch.Tensor,
    *,
    bce_weight: float,
    dice_weight: float,
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
    generator: torch.Generator | None = None,
    point_losses: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> MaskLossParts:
    """Point-sampled BCE (mean over masks x points) and Dice (mean over masks), weighted.

    ``mask_logits`` [N, h, w] are SAM2's low-resolution logits; ``gt_masks`` [N, H, W] are
    resized (nearest) to h x w first, then both are sampled at the same points. Computed in
    float32 whatever the model dtype. ``point_losses``: what does the deterministic part, a
    ``PointSampledLosses`` (the model's, which may be a compiled region, run through its compile
    fallback); a fresh one when None.
    """
    logits = mask_logits.float()[:, None]  # [N, 1, h, w]
    targets = resize_masks_nearest(gt_masks, logits.shape[-1])[:, None].to(logits.device)
    candidates, extra, num_uncertain = _draw_points(
        logits.shape[0],
        logits.device,
        num_points,
        oversample_ratio,
        importance_sample_ratio,
        generator,
    )
    losses = point_losses if point_losses is not None else PointSampledLosses()
    bce, dice = losses(logits, targets, candidates, extra, num_uncertain)
    return MaskLossParts(loss_mask=bce * bce_weight, loss_dice=dice * dice_weight)


class PointSampledLosses(nn.Module):
    """BCE and Dice at the most uncertain candidate points plus the extra points: everything
    of the mask losses but the random draws. A module (no parameters) so that it can be a
    compiled region of the model; eagerly, its small kernels (forward and backward) are
    launched one by one every step."""

    def forward(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        candidates: torch.Tensor,
        extra: torch.Tensor | None,
        num_uncertain: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        coords = _most_uncertain(logits, candidates, extra, num_uncertain)
        with torch.no_grad():
            point_targets = point_sample(targets, coords)[:, 0]  # [N, P]
        point_logits = point_sample(logits, coords)[:, 0]  # [N, P]
        bce = F.binary_cross_entropy_with_logits(point_logits, point_targets, reduction="mean")
        return bce, dice_loss(point_logits, point_targets)


def llm_cross_entropy(
    hidden_states: torch.Tensor,
    labels: torch.Tensor,
    lm_head: torch.nn.Module,
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Next-token cross-entropy: the hidden state at t predicts the label at t+1; -100 is ignored.

    Only positions whose next label is supervised go through ``lm_head``: the same value as the
    reference (``CrossEntropyLoss()`` on shifted full logits, mean over supervised tokens) without
    materialising [B, T, vocab] logits for prompt and image tokens. A batch with no supervised
    token returns 0 connected to the graph instead of NaN.
    """
    shift_labels = labels[:, 1:].to(hidden_states.device)
    if positions is not None:
        # Found on the CPU (Sa2VABatch.supervised_positions): no boolean indexing, no sync.
        positions = positions.to(hidden_states.device)
        rows, cols = positions[:, 0], positions[:, 1]
        selected, targets = hidden_states[rows, cols], shift_labels[rows, cols]
    else:
        supervised = shift_labels != -100
        selected, targets = hidden_states[:, :-1][supervised], shift_labels[supervised]
    logits = lm_head(selected).float()  # [n_supervised, vocab]
    if selected.shape[0] == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits, targets)
