"""`vesselctl evaluate --ckpt CKPT | --model DIR`: predict a split, then score it, in one folder.

Reads top to bottom: check the inputs, choose and prepare the results folder, convert a training
checkpoint once into OUT/model (the convert stage, verified), predict the evaluated split with
probabilities into OUT/predictions (and, for a threshold sweep, the validation split into
OUT/predictions-<split>, so the threshold is never tuned on the evaluated images), optionally
write an all-empty prediction as the floor to beat, then run the evaluate stage into OUT itself
(per_image.csv, summary.json, overlays/, result.json last).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vesselctl.data.images import encode_png
from vesselctl.data.manifest import is_prepared_dataset, read_manifest
from vesselctl.errors import ConfigError, DatasetError
from vesselctl.files import atomic_write_bytes
from vesselctl.settings.evaluate import EvaluateSettings
from vesselctl.settings.predict import PredictOutputSettings, PredictSettings
from vesselctl.stages import evaluate as evaluate_stage
from vesselctl.stages import predict as predict_stage
from vesselctl.stages.evaluate import EvaluateResult

PREDICTIONS_DIR = "predictions"
PROBABILITIES_DIR = "probabilities"  # predict's sub-folder of probability maps
MODEL_DIR = "model"
EMPTY_BASELINE_DIR = "baseline-empty"
#: Folders this stage writes inside OUT; --overwrite removes exactly these (and nothing else).
OWN_DIRS = (
    PREDICTIONS_DIR,
    *(f"{PREDICTIONS_DIR}-{split}" for split in ("train", "val", "test")),
    MODEL_DIR,
    EMPTY_BASELINE_DIR,
    evaluate_stage.OVERLAY_DIR,
)


def default_out(source: Path, split: str) -> Path:
    """Where results go without --out: beside the run for a vesselctl step, else beside CKPT.

    A vesselctl checkpoint RUN/checkpoints/step_N gives RUN/eval-step_N-<split>, which
    `vesselctl report RUN` then finds on its own.
    """
    source = Path(source)
    if source.parent.name == "checkpoints" and (source.parent.parent / "settings.yaml").is_file():
        return source.parent.parent / f"eval-{source.name}-{split}"
    stem = source.stem if source.is_file() else source.name
    return source.parent / f"{stem}-eval-{split}"


def _prepare_out(out: Path, overwrite: bool) -> None:
    """OUT must be new or empty, or --overwrite given (then only this stage's outputs go)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; choose a folder")
    existing = [p for p in out.iterdir() if not p.name.startswith(".")] if out.is_dir() else []
    if existing and not overwrite:
        raise ConfigError(
            f"--out {out} is not empty; pass --set overwrite=true to replace its results, or "
            "choose another --out"
        )
    for name in OWN_DIRS:
        if (out / name).is_dir():
            shutil.rmtree(out / name)
    out.mkdir(parents=True, exist_ok=True)


def _predict_settings(
    settings: EvaluateSettings, model: Path, dataset: Path, split: str, out: Path
) -> PredictSettings:
    """predict's settings for one split: probabilities as float16 npz so AUCs can be computed.

    The mask PNGs predict writes use the evaluation threshold (``threshold.value``), so they
    show what is scored unless a sweep picks another threshold (summary.json records it).
    """
    inference = settings.inference.model_copy(update={"threshold": settings.threshold.value})
    return PredictSettings(
        model=model,
        input=dataset,
        split=split,  # type: ignore[arg-type]
        out=out,
        inference=inference,
        output=PredictOutputSettings(probabilities="npz", overlays=True, overwrite=True),
        progress=False,
    )


def write_empty_predictions(dataset: Path, split: str, out: Path) -> int:
    """An all-zero mask for every image of ``split``: the score of predicting no vessel at all."""
    records = read_manifest(dataset, split)
    for record in records:
        empty = np.zeros((record.height, record.width), dtype=np.uint8)
        atomic_write_bytes(out / f"{record.id}.png", encode_png(empty))
    return len(records)


def run(
    settings: EvaluateSettings, progress: Callable[[int], Callable[[], None]] | None = None
) -> EvaluateResult:
    """Predict ``settings.split`` of the prepared dataset with --ckpt/--model, then evaluate it."""
    # 1. Inputs first, so a typo fails before any model is loaded.
    if not settings.predicts:
        raise ConfigError("evaluate_model needs --ckpt CKPT or --model DIR")
    source = Path(settings.ckpt or settings.model)  # type: ignore[arg-type]
    if not source.exists():
        flag = "--ckpt" if settings.ckpt is not None else "--model"
        raise ConfigError(f"{flag} {source}: no such file or folder")
    dataset = Path(settings.data or settings.gt)  # type: ignore[arg-type]
    if not is_prepared_dataset(dataset):
        raise DatasetError(
            f"--data {dataset}: not a prepared dataset (no manifest.jsonl); run `vesselctl "
            "prepare` first, or predict yourself and score with --pred/--gt"
        )
    splits = [settings.split]
    if settings.threshold.sweep:
        if settings.threshold.sweep_split == settings.split:
            raise ConfigError(
                f"threshold.sweep_split is '{settings.split}', the split being evaluated; "
                "choosing the threshold on it would tune on the test data. Use "
                "--set threshold.sweep_split=val"
            )
        splits.append(settings.threshold.sweep_split)
    for split in splits:
        if not read_manifest(dataset, split):
            raise DatasetError(
                f"{dataset}/manifest.jsonl: split '{split}' has no images; choose another split "
                "or prepare the dataset with a non-zero share for it"
            )

    # 2. The results folder; refused here, before the model runs, if the evaluate stage would
    #    refuse it (inside an input folder).
    out = Path(settings.out) if settings.out is not None else default_out(source, settings.split)
    evaluate_stage.check_out_outside_inputs(
        out, {"--data": dataset, "--fov": settings.fov, "--compare": settings.compare}
    )
    _prepare_out(out, settings.overwrite)

    # 3. The model: a training checkpoint is converted (and verified) once, into OUT/model;
    #    both predictions below then load the same folder.
    probe = PredictSettings(model=source, base=settings.base, input=dataset, out=out)
    model_source = predict_stage.resolve_model_source(probe, out)
    model = Path(str(model_source.model_dir))

    # 4. Predict the evaluated split, and the sweep split into its own folder.
    predictions = out / PREDICTIONS_DIR
    predict_stage.run(_predict_settings(settings, model, dataset, settings.split, predictions))
    sweep_pred = settings.threshold.sweep_pred
    if settings.threshold.sweep:
        sweep_dir = out / f"{PREDICTIONS_DIR}-{settings.threshold.sweep_split}"
        predict_stage.run(
            _predict_settings(settings, model, dataset, settings.threshold.sweep_split, sweep_dir)
        )
        sweep_pred = sweep_dir / PROBABILITIES_DIR

    # 5. The floor: an all-empty prediction of the same images, compared pairwise.
    compare = settings.compare
    if settings.compare_empty:
        compare = out / EMPTY_BASELINE_DIR
        write_empty_predictions(dataset, settings.split, compare)

    # 6. Score into OUT; its settings.yaml keeps --ckpt/--model, so the folder says what ran.
    # The probability maps (float16 npz) are scored, so AUCs are computed and a sweep can work.
    update: dict[str, Any] = {
        "pred": predictions / PROBABILITIES_DIR,
        "gt": dataset,
        "out": out,
        "compare": compare,
    }
    threshold = settings.threshold.model_copy(update={"sweep_pred": sweep_pred})
    scored = settings.model_copy(update={**update, "threshold": threshold})
    return evaluate_stage.run(scored, progress)
