"""Point sampling, BCE/Dice and LLM cross-entropy against hand-computed values."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vesselctl.model.losses import (
    dice_loss,
    llm_cross_entropy,
    mask_losses,
    point_sample,
    resize_masks_nearest,
    uncertain_point_coords,
)


def test_point_sample_reads_pixel_values_at_pixel_centres():
    image = torch.arange(12, dtype=torch.float32).reshape(1, 1, 3, 4)
    # (x, y) in [0,1]: the centre of pixel (row r, col c) is ((c + .5) / W, (r + .5) / H).
    coords = torch.tensor([[[0.5 / 4, 0.5 / 3], [3.5 / 4, 2.5 / 3], [1.5 / 4, 1.5 / 3]]])
    assert torch.allclose(
        point_sample(image, coords)[0, 0], torch.tensor([0.0, 11.0, 5.0]), atol=1e-5
    )
    # Half-way between two pixel centres is their mean (bilinear).
    between = torch.tensor([[[1.0 / 4, 0.5 / 3]]])
    assert torch.allclose(point_sample(image, between)[0, 0], torch.tensor([0.5]))


def test_importance_sampling_keeps_the_most_uncertain_points():
    # Logits are confident (|x| = 20) except a band of zeros over the left half of the columns;
    # about half of the 3 x 400 candidates fall in it, more than the 400 to keep.
    logits = torch.full((2, 1, 32, 32), 20.0)
    logits[..., :16] = 0.0
    gen = torch.Generator().manual_seed(0)
    coords = uncertain_point_coords(logits, 400, 3.0, 1.0, generator=gen)
    assert coords.shape == (2, 400, 2)
    assert bool(((coords >= 0) & (coords <= 1)).all())
    assert bool((coords[..., 0] < 16.5 / 32).all())  # all importance points inside the band
    mixed = uncertain_point_coords(logits, 400, 3.0, 0.75, generator=gen)
    assert bool((mixed[:, :300, 0] < 16.5 / 32).all())  # the 75 % importance part
    assert bool((mixed[:, 300:, 0] > 16.5 / 32).any())  # the uniform 25 % reaches the rest


def test_dice_matches_its_formula():
    logits = torch.tensor([[0.0, 0.0, 10.0, -10.0]])
    targets = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    p = torch.sigmoid(logits)
    expected = 1 - (2 * (p * targets).sum() + 1) / (p.sum() + targets.sum() + 1)
    assert torch.allclose(dice_loss(logits, targets), expected)


def test_mask_losses_are_the_weighted_bce_and_dice_of_the_sampled_points():
    torch.manual_seed(0)
    logits = torch.randn(3, 16, 16)
    gt = (torch.rand(3, 40, 40) > 0.5).float()
    kw = dict(num_points=500, oversample_ratio=3.0, importance_sample_ratio=0.75)
    parts = mask_losses(
        logits,
        gt,
        bce_weight=2.0,
        dice_weight=0.5,
        generator=torch.Generator().manual_seed(1),
        **kw,
    )
    # The same points drawn again by hand, then the formulas: BCE averaged over masks x points,
    # Dice averaged over masks, GT resized with nearest neighbour to the logits first.
    coords = uncertain_point_coords(
        logits[:, None], generator=torch.Generator().manual_seed(1), **kw
    )
    p_logits = point_sample(logits[:, None], coords)[:, 0]
    p_targets = point_sample(resize_masks_nearest(gt, 16)[:, None], coords)[:, 0]
    bce = F.binary_cross_entropy_with_logits(p_logits, p_targets)
    prob = p_logits.sigmoid()
    dice = (1 - (2 * (prob * p_targets).sum(1) + 1) / (prob.sum(1) + p_targets.sum(1) + 1)).mean()
    assert torch.allclose(parts.loss_mask, 2.0 * bce, atol=1e-6)
    assert torch.allclose(parts.loss_dice, 0.5 * dice, atol=1e-6)


def test_mask_losses_reward_the_right_mask_and_backpropagate():
    gt = torch.zeros(1, 64, 64)
    gt[:, 16:48, 16:48] = 1
    good = ((gt * 2 - 1) * 8)[:, ::4, ::4].clone().requires_grad_(True)  # 16x16 logits
    bad = (-good.detach()).clone()
    kw = dict(
        bce_weight=2.0,
        dice_weight=0.5,
        num_points=500,
        oversample_ratio=3.0,
        importance_sample_ratio=0.75,
    )
    g = mask_losses(good, gt, **kw)
    b = mask_losses(bad, gt, **kw)
    # Importance sampling puts most points on the (soft) edges, so 'good' is not ~0.
    assert g.loss_mask < 0.2 * b.loss_mask and g.loss_dice < 0.5 * b.loss_dice
    (g.loss_mask + g.loss_dice).backward()
    assert good.grad is not None and torch.isfinite(good.grad).all()


def test_ground_truth_is_resized_with_nearest_neighbour():
    gt = torch.zeros(1, 8, 8)
    gt[0, :4, :4] = 1
    small = resize_masks_nearest(gt, 4)
    assert small.tolist() == [[[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]]


def test_llm_cross_entropy_equals_the_shifted_full_logits_reference():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 11, bias=False)
    hidden = torch.randn(2, 6, 8)
    labels = torch.tensor([[-100, -100, 3, 4, 5, -100], [-100, 1, 2, -100, -100, -100]])
    full = head(hidden)
    expected = F.cross_entropy(
        full[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    assert torch.allclose(llm_cross_entropy(hidden, labels, head), expected, atol=1e-6)


def test_llm_cross_entropy_without_supervised_tokens_is_zero_and_connected():
    head = torch.nn.Linear(4, 5)
    hidden = torch.randn(1, 3, 4, requires_grad=True)
    loss = llm_cross_entropy(hidden, torch.full((1, 3), -100), head)
    assert loss.item() == 0.0
    loss.backward()
    assert head.weight.grad is not None
