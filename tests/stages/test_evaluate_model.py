"""`evaluate --ckpt/--model`: a tiny training checkpoint becomes one complete results folder."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.training.synthetic import make_prepared_dataset
from vesselctl.cli import app
from vesselctl.errors import ConfigError
from vesselctl.settings.base import load_settings
from vesselctl.settings.evaluate import EvaluateSettings
from vesselctl.settings.train import TrainSettings
from vesselctl.stages import evaluate_model
from vesselctl.stages import train as train_stage

TEST_IDS = ["img_006", "img_007"]


def _with_test_split(root: Path) -> Path:
    """The training fixture's dataset with its last two images moved to a 'test' split."""
    make_prepared_dataset(root, n_train=4, n_val=4, size=48)
    lines = (root / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    for record in records:
        if record["id"] in TEST_IDS:
            record["split"] = "test"
    (root / "manifest.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in records), encoding="utf-8"
    )
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(prepared dataset, step checkpoint) of a 2-step tiny run started from random weights."""
    root = tmp_path_factory.mktemp("evaluate_model")
    data = _with_test_split(root / "data")
    settings = load_settings(
        TrainSettings,
        None,
        [
            "data.num_workers=0",
            "optim.max_steps=2",
            "optim.micro_batch=2",
            "processor.max_tiles=1",
            "validation.every_steps=0",
            "logging.tensorboard=false",
            "logging.progress=false",
        ],
        {"data.dataset": data, "out": root / "run"},
    )
    result = train_stage.run(settings)
    return data, Path(str(result.last_checkpoint))


def _settings(**flags: object) -> EvaluateSettings:
    extra = [
        "inference.device=cpu",
        "aggregation.bootstrap_resamples=20",
        "overlays.k=1",
        "workers=1",
    ]
    return load_settings(EvaluateSettings, None, extra, flags)


def test_ckpt_gives_one_complete_results_folder(trained: tuple[Path, Path]) -> None:
    data, checkpoint = trained
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "evaluate", "--ckpt", str(checkpoint), "--data", str(data), "--split", "test",
            "--sweep", "--compare-empty", "--device", "cpu",
            "--set", "aggregation.bootstrap_resamples=20", "--set", "overlays.k=1",
            "--workers", "1",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output + result.stderr
    # Without --out, a step of a run folder is evaluated into RUN/eval-step_N-test.
    out = checkpoint.parent.parent / f"eval-{checkpoint.name}-test"
    assert out == evaluate_model.default_out(checkpoint, "test")

    # The converted model, the predictions of the test and (for the sweep) val splits.
    assert (out / "model" / "config.json").is_file()
    assert json.loads((out / "model" / "result.json").read_text())["verify"]["passed"]
    for split, ids in (("predictions", TEST_IDS), ("predictions-val", ["img_004", "img_005"])):
        assert sorted(p.stem for p in (out / split / "masks").glob("*.png")) == ids
        assert sorted(p.stem for p in (out / split / "probabilities").glob("*.npz")) == ids
    prob = np.load(out / "predictions" / "probabilities" / "img_006.npz")["prob"]
    assert prob.shape == (48, 48) and prob.min() >= 0.0 and prob.max() <= 1.0

    # The evaluation itself: per image, summary with AUCs, a threshold chosen on val only.
    with open(out / "per_image.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["id"] for r in rows) == TEST_IDS
    summary = json.loads((out / "summary.json").read_text())
    assert {"dice", "cldice", "auc_roc", "auc_pr"} <= set(summary["metrics"])
    assert "split 'val'" in summary["threshold"]["source"]
    assert summary["threshold"]["sweep"]["n_images"] == 2
    # The all-empty floor, scored on the same images.
    assert summary["compare"]["other_macro_mean"]["dice"] == 0.0
    assert sorted(p.stem for p in (out / "baseline-empty").glob("*.png")) == TEST_IDS
    assert list((out / "overlays").glob("worst_01_*.png"))
    settings_text = (out / "settings.yaml").read_text()
    assert str(checkpoint) in settings_text
    assert json.loads((out / "result.json").read_text())["n_images"] == 2
    assert "wrote" in result.output


def test_model_folder_and_refusals(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, checkpoint = trained
    first = evaluate_model.run(
        _settings(ckpt=checkpoint, data=data, out=tmp_path / "a", split="test")
    )
    model = tmp_path / "a" / "model"
    # A model folder is used as it is; the same weights give the same numbers.
    second = evaluate_model.run(_settings(model=model, data=data, out=tmp_path / "b", split="test"))
    assert not (tmp_path / "b" / "model").exists()
    assert second.macro["dice"]["mean"] == pytest.approx(first.macro["dice"]["mean"])
    # A results folder is never silently replaced...
    with pytest.raises(ConfigError, match="not empty"):
        evaluate_model.run(_settings(model=model, data=data, out=tmp_path / "b", split="test"))
    # ...unless asked.
    evaluate_model.run(
        _settings(model=model, data=data, out=tmp_path / "b", split="test", overwrite=True)
    )
    # The sweep split must differ from the evaluated split.
    with pytest.raises(ConfigError, match="tune on the test data"):
        evaluate_model.run(
            _settings(
                model=model, data=data, out=tmp_path / "c", split="val", **{"threshold.sweep": True}
            )
        )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"ckpt": "x", "model": "y", "data": "d"}, "not both"),
        ({"ckpt": "x", "pred": "p", "data": "d"}, "drop --pred"),
        ({"ckpt": "x"}, "no prepared dataset"),
        ({"ckpt": "x", "data": "d", "gt": "g"}, "differ"),
        ({"pred": "p", "gt": "g", "base": "b"}, "apply only with --ckpt/--model"),
        ({"ckpt": "x", "data": "d", "compare": "c", "compare_empty": True}, "use one"),
    ],
)
def test_settings_refuse_mixed_inputs(flags: dict[str, object], message: str) -> None:
    from vesselctl.errors import ConfigError as Error

    with pytest.raises(Error, match=message):
        load_settings(EvaluateSettings, None, [], flags)


def test_out_inside_the_dataset_is_refused_before_anything_runs(tmp_path: Path) -> None:
    data = _with_test_split(tmp_path / "data")
    model = tmp_path / "model"
    model.mkdir()  # never loaded: the output folder is checked first
    with pytest.raises(ConfigError, match="inside the --data folder"):
        evaluate_model.run(_settings(model=model, data=data, out=data / "eval", split="test"))
    assert not (data / "eval").exists()


def test_cli_names_a_missing_checkpoint(tmp_path: Path) -> None:
    data = _with_test_split(tmp_path / "data")
    result = CliRunner().invoke(
        app, ["evaluate", "--ckpt", str(tmp_path / "nope"), "--data", str(data)]
    )
    assert result.exit_code == 2
    assert "--ckpt" in result.stderr and "nope" in result.stderr
