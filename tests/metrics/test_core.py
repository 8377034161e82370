"""Dice and clDice on hand-computed cases, including the empty-mask policy."""

from __future__ import annotations

import numpy as np
import pytest

from vesselctl.metrics import cldice_score, dice_score


def test_dice_hand_computed() -> None:
    pred = np.zeros((4, 4), bool)
    gt = np.zeros((4, 4), bool)
    pred[0, :3] = True  # 3 pixels
    gt[0, 1:] = True  # 3 pixels, 2 shared
    assert dice_score(pred, gt) == pytest.approx(4 / 6)


def test_empty_policy() -> None:
    empty = np.zeros((5, 5), bool)
    full = np.ones((5, 5), bool)
    assert dice_score(empty, empty) == 1.0 and cldice_score(empty, empty) == 1.0
    assert dice_score(empty, full) == 0.0 and cldice_score(full, empty) == 0.0


def test_cldice_half_of_a_thin_vessel() -> None:
    gt = np.zeros((9, 20), bool)
    gt[4, 2:18] = True  # a 1-pixel vessel: its skeleton is itself (16 px)
    pred = np.zeros_like(gt)
    pred[4, 2:10] = True  # the first half (8 px)
    # Tprec = 8/8 = 1, Tsens = 8/16 = 0.5, clDice = 2*1*0.5/1.5 = 2/3
    assert cldice_score(pred, gt) == pytest.approx(2 / 3)


def test_cldice_ignores_width_where_dice_does_not() -> None:
    gt = np.zeros((9, 20), bool)
    gt[3:6, 2:18] = True  # a 3-pixel-wide vessel
    pred = np.zeros_like(gt)
    pred[4, 2:18] = True  # its centre line only
    assert cldice_score(pred, gt) > 0.95
    assert dice_score(pred, gt) == pytest.approx(2 * 16 / (16 + 48))


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        dice_score(np.zeros((2, 2)), np.zeros((3, 3)))
