"""The evaluate stage end to end on tiny data: run folder contents, sweep rules, comparison."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from tests.metrics.evaluate_data import (
    noisy_prob,
    save_mask,
    save_prob,
    vessel_mask,
    write_prepared_dataset,
)
from vesselctl.errors import ConfigError, EvaluationError
from vesselctl.settings.base import load_settings
from vesselctl.settings.evaluate import EvaluateSettings
from vesselctl.stages import evaluate as stage


@pytest.fixture
def project(tmp_path):
    """A prepared dataset (val 4, test 5 images) with probability and binary predictions."""
    rng = np.random.default_rng(7)
    splits = {
        "train": {"tr0": vessel_mask(rng, 32, 36)},
        "val": {f"v{i}": vessel_mask(rng, 32, 36) for i in range(4)},
        "test": {f"t{i}": vessel_mask(rng, 32, 36) for i in range(5)},
    }
    write_prepared_dataset(tmp_path / "data", splits)
    for split in ("val", "test"):
        for case_id, mask in splits[split].items():
            save_prob(tmp_path / "prob" / f"{case_id}.png", noisy_prob(rng, mask))
            if split == "test":
                save_mask(
                    tmp_path / "binary" / f"{case_id}.png", mask & (rng.random(mask.shape) < 0.8)
                )
    return tmp_path


def _settings(**values) -> EvaluateSettings:
    return load_settings(EvaluateSettings, flags=values)


def test_run_writes_a_complete_folder(project) -> None:
    out = project / "eval"
    settings = _settings(pred=project / "prob", gt=project / "data", out=out, workers=1)
    settings.overlays.k = 2
    result = stage.run(settings)
    assert result.n_images == 5 and result.threshold == 0.5
    for name in ("per_image.csv", "summary.json", "settings.yaml", "run_info.json", "result.json"):
        assert (out / name).is_file(), name
    assert len(list((out / "overlays").glob("*.png"))) == 4
    with open(out / "per_image.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["id"] for r in rows] == [f"t{i}" for i in range(5)]
    assert {"dice", "cldice", "hd95", "auc_roc", "tp"} <= set(rows[0])

    def strict(constant):
        raise ValueError(f"summary.json holds {constant}")

    summary = json.loads((out / "summary.json").read_text(), parse_constant=strict)
    assert summary["ignored_other_split_predictions"] == ["v0", "v1", "v2", "v3"]
    assert summary["threshold"] == {
        "value": 0.5,
        "source": "setting threshold.value",
        "sweep": None,
    }
    assert summary["macro"]["dice"]["n"] == 5
    assert summary["micro"]["iou"]["ci_low"] <= summary["micro"]["iou"]["value"]
    assert "hd95, assd" in summary["empty_policy"]
    assert summary["conventions"]["foreground_connectivity"] == 8
    assert len(summary["per_case"]) == 5 and summary["versions"]["numpy"]
    mean_dice = np.mean([float(r["dice"]) for r in rows])
    assert math.isclose(summary["macro"]["dice"]["mean"], mean_dice, rel_tol=1e-12)
    result_json = json.loads((out / "result.json").read_text())
    assert result_json["n_images"] == 5


def test_progress_callback_counts_every_image(project) -> None:
    calls: list[int] = []
    totals: list[int] = []

    def progress(total: int):
        totals.append(total)
        return lambda: calls.append(1)

    settings = _settings(pred=project / "prob", gt=project / "data", out=project / "p", workers=2)
    settings.overlays.k = 0
    stage.run(settings, progress)
    assert totals == [5] and len(calls) == 5
    assert not (project / "p" / "overlays").exists()


def test_rerun_into_the_same_folder_replaces_old_overlays(project) -> None:
    out = project / "again"
    settings = _settings(pred=project / "prob", gt=project / "data", out=out, workers=1)
    settings.overlays.k = 2
    stage.run(settings)
    settings.overlays.k = 1
    stage.run(settings)
    assert len(list((out / "overlays").glob("*.png"))) == 2


def test_sweep_chooses_on_validation_and_reports_it(project) -> None:
    settings = _settings(pred=project / "prob", gt=project / "data", out=project / "e", workers=1)
    settings.threshold.sweep = True
    result = stage.run(settings)
    summary = json.loads((project / "e" / "summary.json").read_text())
    sweep = summary["threshold"]["sweep"]
    assert "split 'val'" in result.threshold_source and sweep["n_images"] == 4
    best = max(sweep["scores"].values())
    assert sweep["scores"][f"{result.threshold:g}"] == best


def test_sweep_on_the_evaluated_split_is_refused(project) -> None:
    settings = _settings(pred=project / "prob", gt=project / "data", out=project / "e")
    settings.threshold.sweep = True
    settings.threshold.sweep_split = "test"
    with pytest.raises(ConfigError, match="tune on the data being scored"):
        stage.run(settings)
    masks = _settings(pred=project / "prob", gt=project / "data" / "masks", out=project / "e")
    masks.threshold.sweep = True
    with pytest.raises(ConfigError, match="sweep_gt"):
        stage.run(masks)


def test_default_output_folder_sits_next_to_the_predictions(project, monkeypatch) -> None:
    monkeypatch.chdir(project / "prob")
    result = stage.run(_settings(pred=".", gt=project / "data", workers=1))
    assert result.out_dir.resolve() == (project / "prob-eval").resolve()
    assert (project / "prob-eval" / "result.json").is_file()


def test_sweep_with_mask_folders_uses_separate_validation_folders(project) -> None:
    rng = np.random.default_rng(9)
    for i in range(3):
        mask = vessel_mask(rng, 32, 36)
        save_mask(project / "val_gt" / f"v{i}.png", mask)
        save_prob(project / "val_prob" / f"v{i}.png", np.where(mask, 0.72, 0.3))
    test_prob = project / "test_prob"
    for path in (project / "prob").glob("t*.png"):
        test_prob.mkdir(exist_ok=True)
        (test_prob / path.name).write_bytes(path.read_bytes())
    settings = _settings(pred=test_prob, gt=project / "data" / "masks", out=project / "s")
    settings.threshold.sweep = True
    settings.threshold.sweep_gt = project / "val_gt"
    settings.threshold.sweep_pred = project / "val_prob"
    settings.threshold.sweep_values = [0.1, 0.5, 0.8]
    settings.workers = 1
    with pytest.raises(EvaluationError, match=r"have no prediction .*tr0, v0"):
        stage.run(settings)  # that folder holds train and val masks too: listed, stops
    (project / "test_gt").mkdir()
    for path in (project / "data" / "masks").glob("t[0-9]*.png"):
        (project / "test_gt" / path.name).write_bytes(path.read_bytes())
    settings.gt = project / "test_gt"
    result = stage.run(settings)
    assert result.threshold == 0.5 and "validation masks" in result.threshold_source


def test_output_inside_an_input_is_refused(project) -> None:
    settings = _settings(pred=project / "prob", gt=project / "data", out=project / "prob" / "x")
    with pytest.raises(ConfigError, match="inputs are never written to"):
        stage.run(settings)
    assert not (project / "prob" / "x").exists()


def test_compare_reports_paired_differences(project) -> None:
    settings = _settings(
        pred=project / "binary",
        gt=project / "data",
        out=project / "c",
        compare=project / "prob",
        workers=1,
    )
    result = stage.run(settings)
    paired = result.compare["paired"]
    assert paired["dice"]["n"] == 5
    assert (
        paired["dice"]["ci_low"] <= paired["dice"]["mean_difference"] <= paired["dice"]["ci_high"]
    )
    assert "auc_roc" not in result.metrics  # binary predictions have no AUCs


def test_requested_auc_on_binary_predictions_is_an_error(project) -> None:
    settings = _settings(
        pred=project / "binary", gt=project / "data", out=project / "b", metrics=["dice", "auc_roc"]
    )
    with pytest.raises(EvaluationError, match="auc_roc need probability maps"):
        stage.run(settings)


def test_settings_validation_messages() -> None:
    with pytest.raises(ConfigError, match="pass --pred"):
        load_settings(EvaluateSettings, flags={"gt": "x"})
    with pytest.raises(ConfigError, match="unknown metric"):
        load_settings(EvaluateSettings, flags={"pred": "p", "gt": "g", "metrics": ["dice", "f2"]})
    with pytest.raises(ConfigError, match="rank_by"):
        load_settings(
            EvaluateSettings,
            None,
            ["overlays.rank_by=hd95"],
            {"pred": "p", "gt": "g", "metrics": ["dice"]},
        )


def test_settings_metric_names_match_the_engine() -> None:
    """settings/evaluate.py lists the names without importing numpy; they must not drift."""
    from vesselctl.metrics.image import CONFUSION_METRICS, METRIC_NAMES
    from vesselctl.settings.evaluate import METRIC_CHOICES, SWEEP_METRICS

    assert METRIC_CHOICES == METRIC_NAMES
    assert SWEEP_METRICS == CONFUSION_METRICS
