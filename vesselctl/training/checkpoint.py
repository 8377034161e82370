"""Resumable training checkpoints, written atomically; `vesselctl convert` reads the export part.

Layout of a run folder's checkpoints::

    <run>/checkpoints/
        step_<N>/                      one complete checkpoint (N = optimiser steps done)
            trainable.safetensors      trainable parameters only (see "Export format")
            trainable.json             how to rebuild the model they belong to
            progress.json              global_step, epoch, step_in_epoch, samples_seen,
                                       world_size, effective_batch, strategy, best_val_dice...
            rng_rank<R>.pt             python / numpy / torch / CUDA generator states of rank R
            training_state.pt          single process / DDP: optimiser + scheduler state_dicts
            deepspeed/                 ZeRO strategies: DeepSpeed's own checkpoint (model states
                                       without frozen weights, per-rank optimiser partitions)
        best.json                      {"step": N, "val_dice": d} of the best validation so far
        .tmp_step_<N>/                 a checkpoint being written (ignored; removed on next save)

A checkpoint is written into ``.tmp_step_<N>`` and renamed to ``step_<N>`` only when every rank
has finished, so a folder named ``step_<N>`` is always complete: a run killed while saving leaves
only a ``.tmp_`` folder, which resume ignores. The last ``checkpoint.keep_last`` checkpoints plus
the best one (by validation Dice) are kept. Multi-node runs need the run folder on a file system
every node sees.

Export format (what convert reads):
- ``trainable.safetensors``: every parameter with requires_grad, named as in the peft-wrapped
  Sa2VAModel, i.e. ``base_model.model.`` + the Sa2VAModel name, e.g.
  ``base_model.model.mllm.model.language_model.layers.0.self_attn.q_proj.lora_A.default.weight``,
  ``base_model.model.mllm.model.language_model.embed_tokens.modules_to_save.default.weight``,
  ``base_model.model.mllm.model.multi_modal_projector.linear_1.weight``,
  ``base_model.model.sam2.mask_decoder.*``, ``base_model.model.text_hidden_fcs.{0,2}.*``.
  Without LoRA and trained embeddings the model is not wrapped and names have no prefix.
- ``trainable.json``: ``format`` ("vesselctl-trainable/1"), ``step``, ``seed`` (the run's seed:
  a random-weight preset base is rebuilt from it), ``name_prefix``,
  ``lora`` (enabled, r, alpha, dropout, rslora, targets, target_pattern), ``modules_to_save``,
  ``trainable_token_indices``, ``trainable_groups``, ``model_source`` (the ModelSourceSettings
  the base weights come from), ``parameter_counts``.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vesselctl.errors import CheckpointError, TrainingError
from vesselctl.files import atomic_write_json

# The export's file names are the ones `convert` looks for (model/checkpoints.py): defined there
# once, so the writer and the reader cannot drift apart.
from vesselctl.model.checkpoints import TRAINABLE_META as TRAINABLE_META_NAME
from vesselctl.model.checkpoints import TRAINABLE_WEIGHTS as TRAINABLE_WEIGHTS_NAME

CHECKPOINTS_DIR = "checkpoints"
BEST_NAME = "best.json"
PROGRESS_NAME = "progress.json"
TRAINABLE_FORMAT = "vesselctl-trainable/1"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoints_root(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run folder, oldest first, as (step, folder)."""
    root = checkpoints_root(run_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and child.is_dir() and (child / PROGRESS_NAME).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def resolve_resume(run_dir: Path, resume: str | None) -> Path | None:
    """The checkpoint folder to resume from, or None to start fresh.

    Refuses to start fresh over existing checkpoints: a silent restart would overwrite them.
    """
    existing = list_checkpoints(run_dir)
    if resume is None:
        if existing:
            raise TrainingError(
                f"{run_dir}: the run folder already has checkpoints (last: "
                f"{existing[-1][1].name}); pass --resume auto to continue it, or choose a new "
                "--out folder"
            )
        return None
    if resume == "auto":
        if not existing:
            return None  # nothing to resume: start (so `--resume auto` is safe to always pass)
        return existing[-1][1]
    path = Path(resume)
    if not (path / PROGRESS_NAME).is_file():
        raise TrainingError(
            f"--resume {resume}: not a complete vesselctl checkpoint (no {PROGRESS_NAME}); "
            f"expected a folder like {checkpoints_root(run_dir)}/step_<N>"
        )
    return path


def read_progress(checkpoint: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(checkpoint) / PROGRESS_NAME).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{checkpoint}/{PROGRESS_NAME}: cannot read it ({exc})") from exc


def read_best(run_dir: Path) -> dict[str, Any] | None:
    path = checkpoints_root(run_dir) / BEST_NAME
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters as contiguous CPU tensors (call inside a ZeRO-3 gather)."""
    return {
        name: param.detach().to("cpu", copy=True).contiguous()
        for name, param in model.named_parameters()
        if param.requires_grad
    }


def write_trainable_export(folder: Path, state: dict[str, torch.Tensor], meta: dict) -> None:
    """Write trainable.safetensors + trainable.json into ``folder``."""
    from safetensors.torch import save_file

    save_file(state, str(Path(folder) / TRAINABLE_WEIGHTS_NAME), metadata={"format": "pt"})
    atomic_write_json(Path(folder) / TRAINABLE_META_NAME, meta)


def load_trainable_weights(model: nn.Module, folder: Path) -> None:
    """Copy trainable.safetensors into the model's trainable parameters; names must match."""
    from safetensors.torch import load_file

    path = Path(folder) / TRAINABLE_WEIGHTS_NAME
    try:
        state = load_file(str(path))
    except (OSError, Exception) as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: cannot read it ({exc})") from exc
    params = dict(model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    missing = sorted(trainable - state.keys())
    unexpected = sorted(state.keys() - trainable)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: does not match what trains now ({len(missing)} missing, e.g. "
            f"{missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]}); resume with "
            "the same lora/trainable settings as the run that wrote it"
        )
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))


def rng_state() -> dict[str, Any]:
    """Generator states of this process, in types ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_part = state["numpy"]
    np.random.set_state(
        (
            np_part["name"],
            np_part["keys"].numpy().astype(np.uint32),
            np_part["pos"],
            np_part["has_gauss"],
            np_part["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_rng(folder: Path, rank: int) -> None:
    torch.save(rng_state(), Path(folder) / f"rng_rank{rank}.pt")


def load_rng(folder: Path, rank: int) -> bool:
    """Restore this rank's generators; False when the checkpoint has no file for this rank."""
    path = Path(folder) / f"rng_rank{rank}.pt"
    if not path.is_file():
        return False
    set_rng_state(torch.load(path, map_location="cpu", weights_only=True))
    return True


def temp_dir(run_dir: Path, step: int) -> Path:
    return checkpoints_root(run_dir) / f".tmp_step_{step}"


def final_dir(run_dir: Path, step: int) -> Path:
    return checkpoints_root(run_dir) / f"step_{step}"


def prepare_temp(run_dir: Path, step: int) -> Path:
    """Create an empty temp folder for a checkpoint (rank 0 only; removes a stale one)."""
    tmp = temp_dir(run_dir, step)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def publish(run_dir: Path, step: int, progress: dict[str, Any]) -> Path:
    """Write progress.json last, fsync, and rename the temp folder into place (rank 0 only)."""
    tmp = temp_dir(run_dir, step)
    atomic_write_json(tmp / PROGRESS_NAME, progress)
    final = final_dir(run_dir, step)
    if final.exists():  # the same step saved twice (e.g. best then final): keep the newer one
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    return final


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems do not support fsync on folders; the rename is still atomic
    finally:
        os.close(fd)


def write_best(run_dir: Path, step: int, val_dice: float) -> None:
    atomic_write_json(checkpoints_root(run_dir) / BEST_NAME, {"step": step, "val_dice": val_dice})


def prune(run_dir: Path, keep_last: int) -> list[Path]:
    """Delete all but the last ``keep_last`` checkpoints and the best one; return what went."""
    best = read_best(run_dir)
    best_step = best["step"] if best else None
    checkpoints = list_checkpoints(run_dir)
    keep = {step for step, _ in checkpoints[-keep_last:]}
    removed = []
    for step, path in checkpoints:
        if step not in keep and step != best_step:
            shutil.rmtree(path)
            removed.append(path)
    for stale in checkpoints_root(run_dir).glob(".tmp_step_*"):
        shutil.rmtree(stale, ignore_errors=True)
    return removed
