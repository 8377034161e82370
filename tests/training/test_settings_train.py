"""TrainSettings: defaults follow the user's recipe; cross-field checks name the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from vesselctl.errors import ConfigError
from vesselctl.settings.base import load_settings
from vesselctl.settings.train import TrainSettings


def test_defaults_are_the_lora_recipe() -> None:
    s = TrainSettings()
    assert (s.lora.r, s.lora.alpha, s.lora.dropout, s.lora.targets) == (64, 128, 0.05, "all-linear")
    assert s.optim.lr == 2e-5 and s.optim.weight_decay == 0.05 and s.optim.grad_clip == 1.0
    assert s.trainable.embeddings == "full_copy" and s.distributed.strategy == "auto"
    assert s.model.gradient_checkpointing == "auto" and s.speed.encoder_cache is False


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (["model.kind=preset"], "full_copy"),
        (["model.kind=base", "model.mllm_dir=/m", "model.sam2_dir=/s"], "full_copy"),
        (["model.kind=official_hf", "model.model_dir=/x"], "new_tokens"),
        (["model.kind=vesselctl", "model.model_dir=/x"], "new_tokens"),
        (["model.kind=official_hf", "model.model_dir=/x", "trainable.embeddings=full_copy"],
         "full_copy"),
        (["model.kind=preset", "trainable.embeddings=new_tokens"], "new_tokens"),
        (["model.kind=vesselctl", "model.model_dir=/x", "trainable.embeddings=frozen"], "frozen"),
    ],
)  # fmt: skip
def test_embeddings_auto_resolves_from_the_model_source(
    source: list[str], expected: str, tmp_path: Path
) -> None:
    """auto: only the new-token rows from a Sa2VA checkpoint, full copies from a preset/base;
    the resolved settings.yaml records the choice, not 'auto'."""
    from vesselctl.settings.base import write_resolved_settings

    settings = load_settings(TrainSettings, None, source)
    assert settings.trainable.embeddings == expected
    written = write_resolved_settings(settings, tmp_path)
    assert f"embeddings: {expected}" in written.read_text()
    assert load_settings(TrainSettings, written).trainable.embeddings == expected


@pytest.mark.parametrize(
    ("value", "expected"), [("auto", "auto"), ("true", True), ("false", False)]
)
def test_gradient_checkpointing_accepts_auto_and_booleans(value: str, expected: object) -> None:
    settings = load_settings(TrainSettings, None, [f"model.gradient_checkpointing={value}"])
    assert settings.model.gradient_checkpointing == expected
    with pytest.raises(ConfigError, match="gradient_checkpointing"):
        load_settings(TrainSettings, None, ["model.gradient_checkpointing=sometimes"])


def test_encoder_cache_needs_augmentations_off() -> None:
    with pytest.raises(ConfigError, match=r"data\.augment\.enabled=false"):
        load_settings(TrainSettings, None, ["speed.encoder_cache=true"])
    settings = load_settings(
        TrainSettings, None, ["speed.encoder_cache=true", "data.augment.enabled=false"]
    )
    assert settings.speed.encoder_cache


def test_effective_batch() -> None:
    s = load_settings(
        TrainSettings, None, ["optim.micro_batch=1", "optim.accumulation=8", "distributed.gpus=4"]
    )
    assert s.effective_batch == 32


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("distributed.node_rank=2", "node_rank"),
        ("data.val_split=train", "val_split"),
        ("lora.targets=[]", "empty list"),
        ("lora.targets=some", "all-linear"),
        ("data.augment.scale_range=[1.2,0.9]", "scale_range"),
        ("distributed.strategy=nonsense", "strategy"),
        ("optim.micro_batch=0", "micro_batch"),
    ],
)
def test_bad_settings_are_named(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(TrainSettings, None, [override])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.compile_mode=reduce-overhead"], "model.compile is off"),
        (["model.compile_mode=reduce-overhead", "model.compile=llm"], "'auto'"),
        (
            ["model.compile_mode=reduce-overhead", "model.compile=llm",
             "model.gradient_checkpointing=true"],
            "True",
        ),
    ],
)  # fmt: skip
def test_cuda_graphs_need_compile_and_no_checkpointing(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(TrainSettings, None, overrides)
    ok = load_settings(
        TrainSettings,
        None,
        ["model.compile_mode=reduce-overhead", "model.compile=llm",
         "model.gradient_checkpointing=false"],
    )  # fmt: skip
    assert ok.model.compile_mode == "reduce-overhead"


def test_compile_off_written_bare_in_yaml_is_off(tmp_path: Path) -> None:
    """YAML reads a bare ``off`` as False; both spellings mean compile off."""
    assert load_settings(TrainSettings, None, ["model.compile=off"]).model.compile == "off"
    config = tmp_path / "train.yaml"
    config.write_text("model:\n  compile: off\n")
    assert load_settings(TrainSettings, config, []).model.compile == "off"
    with pytest.raises(ConfigError, match=r"model\.compile"):
        load_settings(TrainSettings, None, ["model.compile=true"])


def test_offload_needs_deepspeed_strategy() -> None:
    with pytest.raises(ConfigError, match="offload"):
        load_settings(TrainSettings, None, ["distributed.offload=true", "distributed.strategy=ddp"])


EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_configs_load(path: Path) -> None:
    settings = load_settings(TrainSettings, path)
    assert settings.effective_batch >= 1


def test_all_example_configs_are_present() -> None:
    names = {p.name for p in EXAMPLES}
    assert {
        "tiny-cpu.yaml",
        "sa2va-1b-1gpu.yaml",
        "sa2va-4b-4gpu.yaml",
        "multinode.yaml",
        "from-official-export.yaml",
        "from-iter-checkpoint.yaml",
    } <= names
