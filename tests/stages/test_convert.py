"""`convert` stage end to end on tiny synthetic official checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from tests.model.official_fixtures import (
    make_training_delta,
    tiny_model,
    write_deepspeed_zero3,
    write_iter_checkpoint,
    write_official_hf_export,
)
from vesselctl.errors import CheckpointError, ConfigError
from vesselctl.files import sha256_file
from vesselctl.model.batch import SegSample
from vesselctl.settings.convert import ConvertSettings
from vesselctl.stages import convert

R, ALPHA = 4, 8.0


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    model, processor = tiny_model("internvl")
    root = tmp_path_factory.mktemp("convert")
    write_official_hf_export(model, processor, root / "hf", "internvl")
    trained, reference = make_training_delta(model, "internvl", r=R, alpha=ALPHA)
    write_iter_checkpoint(root / "iter_3672.pth", trained, R, ALPHA)
    return model, processor, root, trained, reference


def _settings(**kwargs) -> ConvertSettings:
    kwargs.setdefault("verify", {"image_size": 32})
    return ConvertSettings(**kwargs)


def _mask_logits(model, processor) -> torch.Tensor:
    image = convert.synthetic_vessel_image(40, seed=3)
    batch = processor([SegSample("s", image, ["blood vessels", "vessel tree"])], train=False)
    with torch.no_grad():
        return torch.cat(model(batch).mask_logits)


def test_iter_checkpoint_converts_to_the_explicitly_merged_model(official, tmp_path):
    from vesselctl.model.processor import Sa2VAProcessor
    from vesselctl.model.sa2va import Sa2VAModel

    model, processor, root, _, reference = official
    out = tmp_path / "vessel-model"
    result = convert.run(
        _settings(source=root / "iter_3672.pth", base=root / "hf", out=out, dtype="fp32")
    )
    assert result.verify is not None and result.verify.passed
    assert result.verify.max_abs_logit_diff < 1e-4 and result.verify.mask_iou == 1.0
    assert result.step == 3672 and result.lora["r"] == R and result.lora_merged

    # The written weights are the reference merged by explicit math ...
    converted = Sa2VAModel.from_pretrained(str(out), dtype=torch.float32).eval()
    state = converted.state_dict()
    for key, expected in reference.items():
        torch.testing.assert_close(state[key], expected, atol=1e-5, rtol=0)
    # ... and the model computes what the reference model computes.
    reference_model = type(model)(model.config).eval()
    reference_model.load_state_dict(reference)
    torch.testing.assert_close(
        _mask_logits(converted, Sa2VAProcessor.from_pretrained(out)),
        _mask_logits(reference_model, processor),
        atol=1e-5,
        rtol=0,
    )

    saved = json.loads((out / "result.json").read_text())
    assert saved["verify"]["passed"] and saved["source_format"] == "official_iter"
    card = (out / "README.md").read_text()
    assert sha256_file(root / "iter_3672.pth") in card and "passed" in card
    assert (out / "settings.yaml").is_file() and (out / "run_info.json").is_file()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no staging left


def test_deepspeed_folder_in_bf16(official, tmp_path):
    _, _, root, trained, _ = official
    folder = tmp_path / "iter_10.pth"
    write_deepspeed_zero3(folder, trained, world_size=2, r=R, alpha=ALPHA)
    out = tmp_path / "bf16"
    result = convert.run(_settings(source=folder, base=root / "hf", out=out))
    assert result.verify.passed and result.source_format == "deepspeed"
    from safetensors import safe_open

    shard = next(out.glob("model-*.safetensors"))
    with safe_open(str(shard), framework="pt") as handle:
        key = next(iter(handle.keys()))
        assert handle.get_tensor(key).dtype == torch.bfloat16


def test_keep_adapter_writes_base_plus_peft_adapter(official, tmp_path):
    model, _, root, _, reference = official
    out = tmp_path / "adapter-model"
    result = convert.run(
        _settings(
            source=root / "iter_3672.pth", base=root / "hf", out=out, dtype="fp32", merge_lora=False
        )
    )
    assert result.verify.passed and not result.lora_merged
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert (
        config["r"] == R and config["lora_alpha"] == ALPHA and len(config["target_modules"]) == 14
    )
    from safetensors.torch import load_file

    weights = load_file(str(next(out.glob("model-*.safetensors"))))
    q = "mllm.model.language_model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(weights[q], model.state_dict()[q])  # base weight, LoRA not merged
    embed = "mllm.model.language_model.embed_tokens.weight"
    assert torch.equal(weights[embed], reference[embed])  # modules_to_save copy applied


def test_failed_verification_leaves_nothing(official, tmp_path, monkeypatch):
    _, _, root, _, _ = official
    calls = []
    real = convert._mask_logits

    def drifting(model, batch):
        logits = real(model, batch)
        calls.append(1)
        return logits + (5.0 if len(calls) == 2 else 0.0)  # the converted model "differs"

    monkeypatch.setattr(convert, "_mask_logits", drifting)
    out = tmp_path / "never"
    with pytest.raises(CheckpointError, match="verification failed"):
        convert.run(
            _settings(source=root / "iter_3672.pth", base=root / "hf", out=out, dtype="fp32")
        )
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_output_folder_rules(official, tmp_path):
    _, _, root, _, _ = official
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        convert.run(_settings(source=root / "hf", out=out))
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(ConfigError, match="training checkpoints"):
        convert.run(_settings(source=root / "hf", out=tmp_path / "x", base=root / "hf"))


def test_hf_export_without_verification(official, tmp_path):
    _, _, root, _, _ = official
    out = tmp_path / "from-hf"
    result = convert.run(_settings(source=root / "hf", out=out, verify={"enabled": False}))
    assert result.verify is None and result.source_format == "official_hf"
    assert "Not run" in (out / "README.md").read_text()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {p.name for p in out.glob("model-*.safetensors")}


def test_qwen_family_deepspeed_checkpoint(tmp_path):
    from vesselctl.model.sa2va import Sa2VAModel

    model, processor = tiny_model("qwen2_5_vl")
    write_official_hf_export(model, processor, tmp_path / "hf", "qwen2_5_vl")
    trained, reference = make_training_delta(model, "qwen2_5_vl", r=R, alpha=ALPHA)
    write_deepspeed_zero3(tmp_path / "iter_5.pth", trained, world_size=2, r=R, alpha=ALPHA)
    out = tmp_path / "qwen-model"
    result = convert.run(
        _settings(source=tmp_path / "iter_5.pth", base=tmp_path / "hf", out=out, dtype="fp32")
    )
    assert result.family == "qwen2_5_vl" and result.template == "qwen2_5_vl"
    assert result.verify.passed and result.verify.max_abs_logit_diff < 1e-4
    state = Sa2VAModel.from_pretrained(str(out), dtype=torch.float32).state_dict()
    for key, expected in reference.items():
        torch.testing.assert_close(state[key], expected, atol=1e-5, rtol=0)


def test_step_of_a_preset_run_rebuilds_its_random_base(tmp_path):
    """A run that trained the tiny random-weight preset: convert rebuilds the initial weights
    from the preset and the run's seed (as `train` built them) and merges the step over them."""
    import copy

    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file

    from vesselctl.model.load import load_model
    from vesselctl.settings.model import ModelSourceSettings
    from vesselctl.training.loop import seed_everything

    source = ModelSourceSettings(kind="preset", preset="tiny", dtype="float32")
    seed_everything(123, deterministic=False)  # what `train` does before building the model
    model, _ = load_model(source)
    wrapped = get_peft_model(
        copy.deepcopy(model),
        LoraConfig(
            r=R,
            lora_alpha=ALPHA,
            target_modules=r".*language_model\.layers\.\d+\..*_proj",
            modules_to_save=["mllm.model.language_model.embed_tokens"],
        ),
    )
    torch.manual_seed(9)
    with torch.no_grad():
        for param in wrapped.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.1)
    run = tmp_path / "run"
    step = run / "checkpoints" / "step_4"
    step.mkdir(parents=True)
    trainable = {n: p.detach().clone() for n, p in wrapped.named_parameters() if p.requires_grad}
    save_file(trainable, str(step / "trainable.safetensors"))
    meta = {
        "format": "vesselctl-trainable/1",
        "step": 4,
        "lora": {"enabled": True, "r": R, "alpha": ALPHA, "rslora": False},
        "model_source": source.model_dump(mode="json"),
    }
    (step / "trainable.json").write_text(json.dumps(meta))
    (run / "settings.yaml").write_text("seed: 123\n")

    out = tmp_path / "model"
    result = convert.run(_settings(source=step, out=out, dtype="fp32"))
    assert result.verify.passed and result.step == 4
    assert "rebuilt with seed 123" in (out / "README.md").read_text()
    from vesselctl.model.sa2va import Sa2VAModel

    converted = Sa2VAModel.from_pretrained(str(out), dtype=torch.float32).state_dict()
    for key, expected in wrapped.merge_and_unload().state_dict().items():
        torch.testing.assert_close(converted[key], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("preset", ["tiny", "tiny-qwen2.5-vl"])
def test_model_folder_written_by_save_model_dir_converts(tmp_path, preset) -> None:
    """save_pretrained stores InternVL in transformers' on-disk layout; convert reads both."""
    import torch

    from vesselctl.model.load import save_model_dir
    from vesselctl.model.presets import build_preset
    from vesselctl.settings.base import load_settings
    from vesselctl.settings.convert import ConvertSettings
    from vesselctl.stages import convert

    torch.manual_seed(0)
    model, processor = build_preset(preset)
    save_model_dir(model, processor, tmp_path / "model")
    settings = load_settings(
        ConvertSettings, None, ["dtype=fp32"], {"source": tmp_path / "model", "out": tmp_path / "o"}
    )
    result = convert.run(settings)
    assert result.verify is not None and result.verify.passed
    assert result.verify.max_abs_logit_diff < 1e-4
