"""End-to-end `train` stage on CPU with the tiny preset and a synthetic vessel dataset.

Covers the issue's bar: a few dozen steps lower the loss and raise validation Dice; SIGKILL then
`--resume auto` ends with the same trainable weights as an uninterrupted run; a two-process
(torchrun, gloo, DDP) run through the same launcher path.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.training.synthetic import make_prepared_dataset
from vesselctl.errors import ConfigError, TrainingError
from vesselctl.settings.base import load_settings
from vesselctl.settings.train import TrainSettings
from vesselctl.stages import train as stage
from vesselctl.training.checkpoint import list_checkpoints

REPO = Path(__file__).resolve().parents[2]
FAST = [
    "data.num_workers=0",
    "logging.tensorboard=false",
    "optim.micro_batch=2",
    "optim.warmup_ratio=0.1",
    "optim.lr=1e-3",
]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One torch thread, as the subprocess runs use: much faster on a busy small machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_prepared_dataset(tmp_path_factory.mktemp("prepared"), n_train=8, n_val=4)


def _settings(dataset: Path, out: Path, *extra: str) -> TrainSettings:
    return load_settings(
        TrainSettings, None, [*FAST, *extra], {"data.dataset": dataset, "out": out}
    )


def test_training_lowers_loss_and_raises_val_dice(dataset: Path, tmp_path: Path) -> None:
    settings = _settings(
        dataset,
        tmp_path / "run",
        "optim.max_steps=24",
        "validation.every_steps=4",
        "checkpoint.every_steps=100",
        "checkpoint.keep_last=1",
    )
    result = stage.run(settings)
    assert result.status == "completed" and result.steps == 24
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if x.get("split") != "val"]
    val = [x for x in lines if x.get("split") == "val"]
    assert [x["step"] for x in train] == list(range(1, 25))
    first = sum(x["loss"] for x in train[:4]) / 4
    last = sum(x["loss"] for x in train[-4:]) / 4
    assert last < 0.85 * first, (first, last)
    assert val[-1]["val_dice"] > val[0]["val_dice"] + 0.1, [v["val_dice"] for v in val]
    for key in ("loss_mask", "loss_dice", "llm_loss", "lr", "grad_norm", "samples_per_s", "eta_s"):
        assert key in train[0]
    # best checkpoint kept besides the last, with the export convert reads
    best = json.loads((tmp_path / "run" / "checkpoints" / "best.json").read_text())
    assert best["step"] == result.best_step
    best_dir = tmp_path / "run" / "checkpoints" / f"step_{best['step']}"
    meta = json.loads((best_dir / "trainable.json").read_text())
    assert meta["lora"]["r"] == 64 and meta["name_prefix"] == "base_model.model."
    weights = load_file(str(best_dir / "trainable.safetensors"))
    assert any(".lora_A." in k for k in weights)
    assert any("text_hidden_fcs" in k for k in weights)
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["best_val_dice"] == pytest.approx(result.best_val_dice)
    assert saved["data_workers"] == 0  # data.num_workers=0 above
    assert (tmp_path / "run" / "settings.yaml").is_file()
    log = (tmp_path / "run" / "train.log").read_text()
    assert "start: strategy single" in log and "0 data worker(s) per process" in log


def test_existing_checkpoints_need_resume(dataset: Path, tmp_path: Path) -> None:
    (tmp_path / "run" / "checkpoints" / "step_3").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "step_3" / "progress.json").write_text("{}")
    with pytest.raises(TrainingError, match="--resume auto"):
        stage.run(_settings(dataset, tmp_path / "run", "optim.max_steps=2"))


def _cli(dataset: Path, out: Path, *extra: str) -> list[str]:
    args = [sys.executable, "-m", "vesselctl", "train", "--data", str(dataset), "--out", str(out)]
    args += ["--no-progress"]
    for item in [*FAST, "validation.every_steps=0", "optim.max_steps=8"]:
        args += ["--set", item]
    return args + list(extra)


def _env() -> dict[str, str]:
    launcher = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in launcher}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"  # the same kernels in every run, so weights compare bitwise
    return env


def test_sigkill_then_resume_matches_uninterrupted_run(dataset: Path, tmp_path: Path) -> None:
    every = ["--set", "checkpoint.every_steps=2", "--set", "checkpoint.keep_last=5"]
    full = subprocess.run(
        _cli(dataset, tmp_path / "full", *every), env=_env(), capture_output=True, text=True
    )
    assert full.returncode == 0, full.stderr[-3000:]

    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen(
        _cli(dataset, killed_dir, *every),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if any(step >= 4 for step, _ in list_checkpoints(killed_dir)):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps = [s for s, _ in list_checkpoints(killed_dir)]
    assert steps and max(steps) < 8

    resumed = subprocess.run(
        _cli(dataset, killed_dir, *every, "--resume", "auto"),
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = load_file(str(tmp_path / "full" / "checkpoints" / "step_8" / "trainable.safetensors"))
    b = load_file(str(killed_dir / "checkpoints" / "step_8" / "trainable.safetensors"))
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-6, worst
    # the schedule continued too: same learning rate at the last step
    last = [json.loads(x) for x in (killed_dir / "metrics.jsonl").read_text().splitlines()][-1]
    ref = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()][
        -1
    ]
    assert last["step"] == 8 and last["lr"] == pytest.approx(ref["lr"])
    assert torch.isfinite(torch.tensor(last["loss"]))


def test_two_process_cpu_run_through_launcher(dataset: Path, tmp_path: Path) -> None:
    run = subprocess.run(
        _cli(
            dataset,
            tmp_path / "ddp",
            "--gpus",
            "2",
            "--master-port",
            str(29500 + os.getpid() % 1000),
            "--set",
            "optim.max_steps=3",
            "--set",
            "optim.micro_batch=1",
            "--set",
            "validation.every_steps=3",
            "--set",
            "data.num_workers=null",  # the default, through the launcher's settings file
        ),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "ddp" / "result.json").read_text())
    assert result["world_size"] == 2 and result["strategy"] == "ddp"
    assert result["effective_batch"] == 2 and result["steps"] == 3
    assert result["best_val_dice"] is not None
    assert result["data_workers"] == 0  # the default resolves to none on the CPU
    assert (tmp_path / "ddp" / "launch_settings_node0.yaml").is_file()


def test_sigterm_saves_and_exits_143(dataset: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "term"
    proc = subprocess.Popen(
        _cli(
            dataset, run_dir, "--set", "optim.max_steps=500", "--set", "checkpoint.every_steps=1000"
        ),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and metrics.read_text().strip():
            break  # the loop runs, so its SIGTERM handler is installed
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-2000:]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "interrupted" and 0 < result["steps"] < 500
    assert [s for s, _ in list_checkpoints(run_dir)] == [result["steps"]]


def test_encoder_cache_gives_the_same_weights_and_auto_checkpointing_is_off_on_cpu(
    dataset: Path, tmp_path: Path
) -> None:
    """Two epochs with the frozen-encoder cache (the second served from it) end with the same
    trainable weights as without; model.gradient_checkpointing auto resolves to off on CPU."""
    common = [
        "optim.max_steps=6",  # 4 steps per epoch: steps 5-6 reuse cached encoder outputs
        "validation.every_steps=0",
        "checkpoint.every_steps=100",
        "data.augment.enabled=false",
        "precision=fp32",
    ]
    plain = stage.run(_settings(dataset, tmp_path / "plain", *common))
    cached = stage.run(_settings(dataset, tmp_path / "cached", *common, "speed.encoder_cache=true"))
    assert plain.encoder_cache is None
    assert cached.encoder_cache is not None
    assert cached.encoder_cache["hits"] >= 2 * 2 and cached.encoder_cache["misses"] >= 8
    a = load_file(str(tmp_path / "plain" / "checkpoints" / "step_6" / "trainable.safetensors"))
    b = load_file(str(tmp_path / "cached" / "checkpoints" / "step_6" / "trainable.safetensors"))
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-5, worst

    saved = json.loads((tmp_path / "cached" / "result.json").read_text())
    assert saved["gradient_checkpointing"]["setting"] == "auto"
    assert saved["gradient_checkpointing"]["enabled"] is False
    assert "not a CUDA device" in saved["gradient_checkpointing"]["reason"]
    assert saved["encoder_cache"]["hits"] == cached.encoder_cache["hits"]
    log_text = (tmp_path / "cached" / "train.log").read_text()
    assert "gradient checkpointing off (model.gradient_checkpointing auto" in log_text
    assert "frozen-encoder cache:" in log_text
    meta = json.loads(
        (tmp_path / "cached" / "checkpoints" / "step_6" / "trainable.json").read_text()
    )
    assert meta["model_source"]["gradient_checkpointing"] is False


def test_encoder_cache_refuses_augmentations_and_training_encoders(dataset: Path) -> None:
    from vesselctl.model.load import load_model

    with pytest.raises(ConfigError, match=r"data\.augment\.enabled"):
        _settings(dataset, dataset / "unused", "speed.encoder_cache=true")
    settings = _settings(
        dataset, dataset / "unused", "speed.encoder_cache=true", "data.augment.enabled=false"
    )
    model, _ = load_model(settings.model.model_copy(update={"gradient_checkpointing": False}))
    model.requires_grad_(False)
    next(model.sam2.vision_encoder.parameters()).requires_grad_(True)
    with pytest.raises(ConfigError, match="encoder parameter"):
        stage._attach_encoder_cache(settings, model, cuda=False)
    model.requires_grad_(False)
    assert stage._attach_encoder_cache(settings, model, cuda=False) is not None


def test_cuda_graphs_refused_on_the_cpu_before_anything_is_written(
    dataset: Path, tmp_path: Path
) -> None:
    settings = _settings(
        dataset,
        tmp_path / "run",
        "model.compile=llm",
        "model.compile_mode=reduce-overhead",
        "model.gradient_checkpointing=false",
    )
    with pytest.raises(ConfigError, match="one CUDA GPU process"):
        stage.run(settings)
    assert not list((tmp_path / "run").glob("checkpoints/*"))


def test_checkpointing_probe_step_leaves_the_run_unchanged(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GPU-only probe of model.gradient_checkpointing auto (one forward and backward of the
    first micro-batch) leaves no gradient and no random draw behind: the weights after a few
    steps equal those of a run without the probe. On CPU the library skips the probe, so the
    device check is bypassed here to run it."""
    from vesselctl.model import acceleration

    probes: list[int] = []

    def probe_on_any_device(model, step, device, memory_fraction=0.9, pending_bytes=0):
        step()
        probes.append(pending_bytes)
        return acceleration.CheckpointingChoice(False, 0.0, 1.0, "probe ran")

    common = ["optim.max_steps=3", "validation.every_steps=0", "checkpoint.every_steps=100"]
    stage.run(_settings(dataset, tmp_path / "fixed", *common, "model.gradient_checkpointing=false"))
    monkeypatch.setattr(acceleration, "choose_gradient_checkpointing", probe_on_any_device)
    probed = stage.run(_settings(dataset, tmp_path / "probed", *common))
    assert len(probes) == 1 and probes[0] > 0
    assert probed.gradient_checkpointing["reason"] == "probe ran"
    a = load_file(str(tmp_path / "fixed" / "checkpoints" / "step_3" / "trainable.safetensors"))
    b = load_file(str(tmp_path / "probed" / "checkpoints" / "step_3" / "trainable.safetensors"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6


def test_resume_with_other_trainable_groups_names_the_setting(
    dataset: Path, tmp_path: Path
) -> None:
    """A checkpoint that trained full embedding copies, resumed by a run that resolves to the
    new-token rows (e.g. a run from before the 'auto' default), is refused with the fix."""
    common = ["validation.every_steps=0", "checkpoint.every_steps=2"]
    stage.run(_settings(dataset, tmp_path / "run", *common, "optim.max_steps=2"))
    with pytest.raises(TrainingError, match=r"--set trainable\.embeddings=full_copy"):
        stage.run(
            _settings(
                dataset,
                tmp_path / "run",
                *common,
                "optim.max_steps=4",
                "trainable.embeddings=new_tokens",
                "resume=auto",
            )
        )
