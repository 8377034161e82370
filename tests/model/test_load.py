"""load_model: every source kind gives the same model (outputs compared), save_model_dir writes a
complete folder atomically, bad sources are refused with the fix named."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.model.official_fixtures import tiny_model, write_official_hf_export
from vesselctl.errors import CheckpointError, ModelError
from vesselctl.model.batch import SegSample
from vesselctl.model.load import load_model, save_model_dir
from vesselctl.settings.model import ModelSourceSettings


def _samples():
    rng = np.random.default_rng(0)
    return [
        SegSample("a", rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), ["blood vessels"]),
        SegSample("b", rng.integers(0, 255, (40, 40, 3), dtype=np.uint8), ["vessels", "vein"]),
    ]


def _probabilities(model, processor):
    with torch.no_grad():
        return model.predict_probabilities(processor(_samples(), train=False))


def _same(a, b, atol=1e-5):
    pairs = zip(a, b, strict=True)
    return len(a) == len(b) and all(torch.allclose(x, y, atol=atol) for x, y in pairs)


def test_preset_source_builds_the_tiny_model_with_its_switches():
    source = ModelSourceSettings(kind="preset", preset="tiny", gradient_checkpointing=True)
    model, processor = load_model(source)
    assert model.dtype == torch.float32  # auto on a CPU-only machine
    assert model.llm_gradient_checkpointing
    assert model.config.mllm_config._attn_implementation == "sdpa"
    assert processor.seg_token_id == model.config.seg_token_id
    bf16, _ = load_model(ModelSourceSettings(kind="preset", preset="tiny", dtype="bfloat16"))
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}


def test_save_model_dir_then_load_vesselctl_reproduces_outputs(tmp_path):
    model, processor = tiny_model("internvl")
    out = save_model_dir(model, processor, tmp_path / "model", max_shard_size="2MB")
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors.index.json", "processor_config.json"} <= names
    assert "tokenizer.json" in names and sum(n.endswith(".safetensors") for n in names) > 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left
    loaded, loaded_processor = load_model(ModelSourceSettings(kind="vesselctl", model_dir=out))
    assert _same(_probabilities(model, processor), _probabilities(loaded.eval(), loaded_processor))
    with pytest.raises(ModelError, match="not empty"):
        save_model_dir(model, processor, out)


@pytest.mark.parametrize("family", ["internvl", "qwen2_5_vl"])
def test_official_hf_export_loads_with_every_key_and_reproduces_outputs(tmp_path, family):
    model, processor = tiny_model(family)
    write_official_hf_export(model, processor, tmp_path / "export", family=family)
    loaded, loaded_processor = load_model(
        ModelSourceSettings(kind="official_hf", model_dir=tmp_path / "export", dtype="float32")
    )
    original, reloaded = model.state_dict(), loaded.state_dict()
    assert original.keys() == reloaded.keys()
    assert all(torch.equal(original[k], reloaded[k]) for k in original)
    assert loaded_processor.seg_token_id == processor.seg_token_id
    # Same inputs (the export carries no processor options; the tiny Qwen preset shrinks its
    # pixel budget), so the outputs must match exactly.
    assert _same(_probabilities(model, processor), _probabilities(loaded.eval(), processor))


def test_a_missing_weight_refuses_the_official_load(tmp_path):
    model, processor = tiny_model("internvl")
    folder = tmp_path / "export"
    write_official_hf_export(model, processor, folder, shards=1)
    from safetensors.torch import load_file, save_file

    shard = next(folder.glob("model-*.safetensors"))
    state = load_file(shard)
    dropped = next(k for k in state if "text_hidden_fcs.0.weight" in k)
    del state[dropped]
    save_file(state, str(shard), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="partial"):
        load_model(ModelSourceSettings(kind="official_hf", model_dir=folder))


def test_vesselctl_kind_on_a_folder_without_config_names_the_fix(tmp_path):
    with pytest.raises(CheckpointError, match=r"no config\.json.*official_hf"):
        load_model(ModelSourceSettings(kind="vesselctl", model_dir=tmp_path))


def test_vesselctl_kind_on_an_official_export_points_to_official_hf(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "sa2va_chat"}')
    with pytest.raises(CheckpointError, match=r"'sa2va_chat'.*use model\.kind=official_hf"):
        load_model(ModelSourceSettings(kind="vesselctl", model_dir=tmp_path))


def test_real_size_preset_without_tokenizer_is_refused():
    with pytest.raises(ModelError, match="tokenizer_dir"):
        load_model(ModelSourceSettings(kind="preset", preset="sa2va-1b"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "preset", "preset": "huge"}, "model.preset is 'huge'"),
        ({"kind": "vesselctl"}, "set model.model_dir"),
        ({"kind": "base", "mllm_dir": "m"}, "model.sam2_dir"),
        ({"kind": "preset", "attn_implementation": "flash"}, "attn_implementation"),
    ],
)
def test_settings_refuse_incomplete_sources(kwargs, message):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        ModelSourceSettings(**kwargs)


def test_base_checkpoints_load_everything_but_the_new_seg_projection(tmp_path):
    """A native MLLM folder + a native SAM2 folder (Sa2VA's starting point): every weight comes
    from them; text_hidden_fcs, new in Sa2VA, is freshly initialised."""
    model, processor = tiny_model("internvl")
    model.mllm.save_pretrained(tmp_path / "mllm")
    processor.tokenizer.save_pretrained(tmp_path / "mllm")
    model.sam2.save_pretrained(tmp_path / "sam2")
    loaded, _ = load_model(
        ModelSourceSettings(
            kind="base", mllm_dir=tmp_path / "mllm", sam2_dir=tmp_path / "sam2", dtype="float32"
        )
    )
    original, reloaded = model.state_dict(), loaded.state_dict()
    assert original.keys() == reloaded.keys()
    differing = {k for k in original if not torch.equal(original[k], reloaded[k])}
    assert differing == {k for k in original if k.startswith("text_hidden_fcs.")}
    assert all(torch.isfinite(reloaded[k]).all() for k in differing)
    loaded.text_hidden_fcs.load_state_dict(model.text_hidden_fcs.state_dict())
    assert _same(_probabilities(model, processor), _probabilities(loaded.eval(), processor))
