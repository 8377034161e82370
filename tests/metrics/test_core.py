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


def test_cldice_line_inside_thick_vessel() -> None:
    gt = np.zeros((9, 20), bool)
    gt[3:6, 2:18] = True  # a thick horizontal vessel
    pred = np.zeros_like(gt)
    pred[4, 2:18] = True  # its centre line only
    # Every skeleton pixel of pred lies in gt (Tprec 1) and gt's skeleton lies on pred (Tsens 1).
    assert cldice_score(pred, gt) == pytest.approx(1.0)
    assert dice_score(pred, gt) < 0.5


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        dice_score(np.zeros((2, 2)), np.zeros((3, 3)))
