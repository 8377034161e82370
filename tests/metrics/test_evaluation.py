"""Reading predictions of every supported kind, pairing by stem, and the errors for bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vesselctl.errors import DatasetError, EvaluationError
from vesselctl.metrics import (
    compute_image_metrics,
    evaluate_arrays,
    evaluate_files,
    evaluate_folders,
    match_cases,
    sweep_thresholds,
)
from vesselctl.metrics.io import read_binary_mask, read_prediction

from .evaluate_data import noisy_prob, save_mask, save_prob, vessel_mask, write_prepared_dataset


@pytest.fixture
def masks() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {f"img{i}": vessel_mask(rng, 24, 30) for i in range(3)}


def _gt_folder(tmp_path, masks):
    for case_id, mask in masks.items():
        save_mask(tmp_path / "gt" / f"{case_id}.png", mask)
    return tmp_path / "gt"


def test_prediction_kinds_are_read_and_thresholded(tmp_path) -> None:
    rng = np.random.default_rng(0)
    mask = vessel_mask(rng, 16, 20)
    prob = noisy_prob(rng, mask)
    Image.fromarray(mask.astype(np.uint8)).save(tmp_path / "a01.png")  # 0/1 PNG
    save_mask(tmp_path / "a255.png", mask)  # 0/255 PNG
    save_prob(tmp_path / "p8.png", prob)
    Image.fromarray(np.rint(prob * 65535).astype(np.uint16)).save(tmp_path / "p16.png")
    np.save(tmp_path / "pf.npy", prob.astype(np.float32))
    np.savez(tmp_path / "pz.npz", prob=prob, other=prob)
    np.save(tmp_path / "pb.npy", mask)
    for name in ("a01.png", "a255.png", "pb.npy"):
        read = read_prediction(tmp_path / name, 0.5)
        assert read.kind == "binary" and read.prob is None
        assert np.array_equal(read.mask, mask), name
    for name in ("p8.png", "p16.png", "pf.npy", "pz.npz"):
        read = read_prediction(tmp_path / name, 0.5)
        assert read.kind == "probability", name
        assert (read.mask == (prob >= 0.5)).mean() > 0.99, name
    p16 = read_prediction(tmp_path / "p16.png", 0.5)
    assert p16.prob.dtype == np.uint16


def test_palette_masks_grey_and_colour(tmp_path) -> None:
    mask = np.zeros((6, 8), bool)
    mask[2:4, 1:7] = True
    grey = Image.fromarray(mask.astype(np.uint8) * 255).convert("P")
    grey.save(tmp_path / "grey.gif")
    labels = Image.fromarray(mask.astype(np.uint8), mode="L").convert("P")
    labels.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)  # index 1 drawn red: a label map
    labels.save(tmp_path / "labels.png")
    assert np.array_equal(read_binary_mask(tmp_path / "grey.gif"), mask)
    assert np.array_equal(read_binary_mask(tmp_path / "labels.png"), mask)


@pytest.mark.parametrize(
    ("writer", "message"),
    [
        (lambda p: np.save(p / "x.npy", np.full((4, 4), 2.0)), "in \\[0, 1\\]"),
        (lambda p: np.save(p / "x.npy", np.zeros((2, 4, 4))), "2-D map"),
        (lambda p: np.savez(p / "x.npz", a=np.zeros((4, 4)), b=np.zeros((4, 4))), "one array"),
        (lambda p: (p / "x.png").write_bytes(b"not a png"), "cannot read"),
        (
            lambda p: Image.fromarray(
                np.stack([np.zeros((4, 4)), np.ones((4, 4)) * 255, np.zeros((4, 4))], 2).astype(
                    np.uint8
                )
            ).save(p / "x.png"),
            "colour image",
        ),
    ],
)
def test_bad_prediction_files_name_the_file(tmp_path, writer, message) -> None:
    writer(tmp_path)
    path = next(tmp_path.iterdir())
    with pytest.raises(EvaluationError, match=message) as info:
        read_prediction(path, 0.5)
    assert path.name in str(info.value)


def test_matching_lists_missing_and_extra(tmp_path, masks) -> None:
    gt = _gt_folder(tmp_path, masks)
    save_mask(tmp_path / "pred" / "img0.png", masks["img0"])
    save_mask(tmp_path / "pred" / "stray.png", masks["img0"])
    with pytest.raises(EvaluationError) as info:
        match_cases(tmp_path / "pred", gt)
    text = str(info.value)
    assert "stray" in text and "img1, img2" in text and "--allow-missing" in text
    (tmp_path / "pred" / "stray.png").unlink()
    matched = match_cases(tmp_path / "pred", gt, allow_missing=True)
    assert matched.missing == ["img1", "img2"]
    rows = evaluate_files(matched.cases, workers=1)
    missing_row = next(r for r in rows if r["id"] == "img1")
    assert missing_row["kind"] == "missing" and missing_row["dice"] == 0.0
    assert missing_row["fn"] == int(masks["img1"].sum())


def test_size_mismatch_and_non_binary_ground_truth(tmp_path, masks) -> None:
    gt = _gt_folder(tmp_path, masks)
    for case_id, mask in masks.items():
        save_mask(tmp_path / "pred" / f"{case_id}.png", mask)
    save_mask(tmp_path / "pred" / "img1.png", np.zeros((10, 10), bool))
    with pytest.raises(EvaluationError, match=r"img1\.png: prediction size 10x10 differs"):
        evaluate_folders(tmp_path / "pred", gt, workers=1)
    save_mask(tmp_path / "pred" / "img1.png", masks["img1"])
    Image.fromarray((np.arange(24 * 30).reshape(24, 30) % 7).astype(np.uint8)).save(gt / "img2.png")
    with pytest.raises(EvaluationError, match=r"img2\.png: a ground-truth mask must be binary"):
        evaluate_folders(tmp_path / "pred", gt, workers=1)


def test_duplicate_stems_and_empty_folders(tmp_path, masks) -> None:
    gt = _gt_folder(tmp_path, masks)
    (tmp_path / "pred").mkdir()
    with pytest.raises(EvaluationError, match="no prediction files"):
        match_cases(tmp_path / "pred", gt)
    save_mask(tmp_path / "pred" / "img0.png", masks["img0"])
    np.save(tmp_path / "pred" / "img0.npy", masks["img0"])
    with pytest.raises(EvaluationError, match="share the stem 'img0'"):
        match_cases(tmp_path / "pred", gt)
    with pytest.raises(EvaluationError, match="does not exist"):
        match_cases(tmp_path / "nowhere", gt)


def test_fov_restricts_and_must_cover_every_image(tmp_path, masks) -> None:
    gt = _gt_folder(tmp_path, masks)
    for case_id, mask in masks.items():
        save_mask(tmp_path / "pred" / f"{case_id}.png", ~mask)  # wrong everywhere
        fov = np.zeros_like(mask)
        fov[:, :10] = True
        save_mask(tmp_path / "fov" / f"{case_id}.png", fov)
    _, rows = evaluate_folders(tmp_path / "pred", gt, fov_dir=tmp_path / "fov", workers=1)
    assert all(r["tp"] + r["fp"] + r["fn"] + r["tn"] == 24 * 10 for r in rows)
    (tmp_path / "fov" / "img2.png").unlink()
    with pytest.raises(EvaluationError, match=r"no field-of-view mask.*img2"):
        match_cases(tmp_path / "pred", gt, fov_dir=tmp_path / "fov")


def test_prepared_dataset_split_and_other_split_predictions(tmp_path) -> None:
    rng = np.random.default_rng(2)
    splits = {s: {f"{s}{i}": vessel_mask(rng, 20, 20) for i in range(2)} for s in ("val", "test")}
    data = write_prepared_dataset(tmp_path / "data", splits)
    for split in splits.values():
        for case_id, mask in split.items():
            save_mask(tmp_path / "pred" / f"{case_id}.png", mask)
    matched = match_cases(tmp_path / "pred", data, "test")
    assert [c.id for c in matched.cases] == ["test0", "test1"]
    assert matched.ignored_other_splits == ["val0", "val1"]
    assert matched.cases[0].image is not None
    with pytest.raises(DatasetError, match="split 'bogus' is unknown"):
        match_cases(tmp_path / "pred", data, "bogus")


def test_parallel_and_serial_rows_agree(tmp_path) -> None:
    rng = np.random.default_rng(4)
    items = []
    for i in range(10):
        gt = vessel_mask(rng, 20, 24)
        prob = noisy_prob(rng, gt)
        items.append((f"c{i}", prob >= 0.5, gt, prob, None))
    serial = evaluate_arrays(items, workers=1)
    parallel = evaluate_arrays(items, workers=2)
    assert serial == parallel
    assert serial[3]["dice"] == compute_image_metrics(items[3][1], items[3][2])["dice"]
    with pytest.raises(EvaluationError, match=r"image 'bad': pred .* differ in shape"):
        evaluate_arrays([("bad", np.zeros((3, 3), bool), np.zeros((4, 4), bool), None, None)])


def test_sweep_picks_the_best_threshold_and_needs_probabilities(tmp_path, masks) -> None:
    gt = _gt_folder(tmp_path, masks)
    for case_id, mask in masks.items():
        # Vessel pixels score 0.7, background 0.4: only thresholds in (0.4, 0.7] are perfect.
        save_prob(tmp_path / "pred" / f"{case_id}.png", np.where(mask, 0.7, 0.4))
        save_mask(tmp_path / "binary" / f"{case_id}.png", mask)
    cases = match_cases(tmp_path / "pred", gt).cases
    result = sweep_thresholds(cases, [0.2, 0.3, 0.45, 0.6, 0.9], "dice", workers=1)
    assert result.threshold == 0.45  # perfect at 0.45 and 0.6; the tie goes to the one nearer 0.5
    assert result.scores[0.45] == 1.0 and result.scores[0.9] == 0.0
    with pytest.raises(EvaluationError, match="needs probability maps"):
        sweep_thresholds(match_cases(tmp_path / "binary", gt).cases, [0.5], workers=1)
