"""Reading official checkpoints (tiny synthetic ones with the exact official names) into native
weights: exact values, merged LoRA equal to explicit math, strict key accounting, clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.model.official_fixtures import (
    make_training_delta,
    tiny_model,
    to_official,
    write_deepspeed_zero2,
    write_deepspeed_zero3,
    write_iter_checkpoint,
    write_official_hf_export,
)
from vesselctl.errors import CheckpointError
from vesselctl.model import checkpoints as ckpt

R, ALPHA = 4, 8.0


def _assert_weights_equal(weights, reference: dict[str, torch.Tensor], atol: float = 1e-5) -> None:
    assert set(weights.keys()) == set(reference)
    for key, expected in reference.items():
        torch.testing.assert_close(
            weights.tensor(key).float(),
            expected.float(),
            atol=atol,
            rtol=0,
            msg=lambda m, k=key: f"{k}: {m}",
        )


_SETUPS: dict[str, tuple] = {}


def _setup(family: str, tmp_path_factory) -> tuple:
    """A tiny model and its official HF export, built once per family for this module."""
    if family not in _SETUPS:
        model, processor = tiny_model(family)
        root = tmp_path_factory.mktemp(f"official-{family}")
        write_official_hf_export(model, processor, root / "hf", family)
        _SETUPS[family] = (family, model, processor, root)
    return _SETUPS[family]


@pytest.fixture(scope="module", params=["internvl", "qwen2_5_vl"])
def family_setup(request, tmp_path_factory):
    """Both families: for the reading and merging tests whose names differ per family."""
    return _setup(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def internvl_setup(tmp_path_factory):
    """One family for the error-path tests (the accounting code is shared by both)."""
    return _setup("internvl", tmp_path_factory)


def test_hf_export_reads_back_exactly(family_setup):
    family, model, _, root = family_setup
    source = ckpt.read_official_hf_export(root / "hf")
    assert source.config.family == family
    assert source.config.seg_token_id == source.tokenizer.convert_tokens_to_ids("[SEG]")
    report = source.reports[0]
    assert report.unmapped == [] and report.unexpected == [] and report.mismatched == []
    assert len(report.dropped) == 5  # the SAM2 video-memory parameters
    weights = ckpt.merged_weights(source, None)
    _assert_weights_equal(weights, model.state_dict(), atol=0)


@pytest.mark.parametrize(
    "container", ["file", "file_old_layout", "deepspeed_zero3", "deepspeed_zero2"]
)
def test_training_checkpoint_merges_to_explicit_math(family_setup, container):
    family, model, _, root = family_setup
    trained, reference = make_training_delta(
        model, family, r=R, alpha=ALPHA, old_layout=container == "file_old_layout"
    )
    path = root / f"iter_{container}.pth"
    if container == "deepspeed_zero3":
        write_deepspeed_zero3(path, trained, world_size=3, r=R, alpha=ALPHA)
    elif container == "deepspeed_zero2":  # stores bf16 weights: compared with bf16 tolerance
        write_deepspeed_zero2(path, trained, r=R, alpha=ALPHA)
    else:
        write_iter_checkpoint(path, trained, R, ALPHA)
    checkpoint = ckpt.read_trained_checkpoint(path)
    assert checkpoint.family == family
    assert checkpoint.lora_spec is not None and checkpoint.lora_spec.alpha == ALPHA
    base = ckpt.read_model_source(root / "hf")
    weights = ckpt.merged_weights(base, checkpoint)
    assert len(weights.delta.lora) == 14  # 7 Linear layers x 2 LLM layers
    atol = 2e-2 if container == "deepspeed_zero2" else 1e-5
    _assert_weights_equal(weights, reference, atol=atol)


def test_vesselctl_training_step_merges(internvl_setup, tmp_path):
    family, model, _, root = internvl_setup
    _, reference = make_training_delta(model, family, r=R, alpha=ALPHA, rslora=True)
    # vesselctl names: base_model.model. + the native Sa2VAModel name
    native_trained = {}
    for native in reference:
        if not torch.equal(reference[native], model.state_dict()[native]):
            key = f"base_model.model.{native}"
            if native.startswith("mllm.model.language_model.layers."):
                stem = key.removesuffix(".weight")
                delta = reference[native] - model.state_dict()[native]
                # rank-R factors reproducing the delta exactly: B = delta @ pinv(A) / scale
                a = torch.randn(R, delta.shape[1])
                scale = ALPHA / R**0.5
                b = delta @ torch.linalg.pinv(a) / scale
                reference[native] = model.state_dict()[native] + scale * (b @ a)
                native_trained[f"{stem}.lora_A.default.weight"] = a
                native_trained[f"{stem}.lora_B.default.weight"] = b
            else:
                native_trained[key] = reference[native]
    step = tmp_path / "checkpoints" / "step_12"
    step.mkdir(parents=True)
    save_file(
        {k: v.contiguous() for k, v in native_trained.items()}, str(step / "trainable.safetensors")
    )
    meta = {
        "format": "vesselctl-trainable/1",
        "step": 12,
        "lora": {"enabled": True, "r": R, "alpha": ALPHA, "rslora": True},
        "model_source": {"kind": "official_hf", "model_dir": str(root / "hf")},
    }
    (step / "trainable.json").write_text(json.dumps(meta))
    checkpoint = ckpt.read_trained_checkpoint(step)
    assert checkpoint.lora_spec.rslora
    base = ckpt.resolve_base(checkpoint, None, None, None)  # from trainable.json's model_source
    _assert_weights_equal(ckpt.merged_weights(base, checkpoint), reference, atol=1e-4)

    # Without the export, the same weights are gathered from the step's ZeRO-3 shards.
    (step / "trainable.safetensors").unlink()
    write_deepspeed_zero3(
        step / "deepspeed" / "global_step12", native_trained, world_size=2, r=R, alpha=ALPHA
    )
    (step / "deepspeed" / "latest").write_text("global_step12")
    gathered = ckpt.read_trained_checkpoint(step)
    assert gathered.kind == "vesselctl_train" and gathered.info["zero_stage"] == 3
    _assert_weights_equal(ckpt.merged_weights(base, gathered), reference, atol=1e-4)


@pytest.mark.parametrize(
    ("family", "sam2_kind"), [("internvl", "original"), ("qwen2_5_vl", "native")]
)
def test_base_checkpoints_as_saved_by_transformers(family, sam2_kind, tmp_path):
    """Base MLLM folders as transformers saves them (the Hub's -hf layout: InternVL as
    language_model.model.* / vision_tower.*, Qwen2.5-VL as model.* / visual.*) + SAM2 as the
    original sam2_hiera_*.pt or a Sam2Model folder."""
    model, processor = tiny_model(family)
    state = model.state_dict()
    mllm_dir = tmp_path / "mllm"
    model.mllm.save_pretrained(mllm_dir)
    processor.tokenizer.save_pretrained(mllm_dir)
    if sam2_kind == "original":
        sam2 = to_official(
            {k: v for k, v in state.items() if k.startswith("sam2.")}, "sam2_original"
        )
        sam2_path = tmp_path / "sam2_hiera_tiny.pt"
        torch.save({"model": sam2}, sam2_path)
    else:
        sam2_path = tmp_path / "sam2"
        model.sam2.save_pretrained(sam2_path)

    source = ckpt.read_base_checkpoints(mllm_dir, sam2_path)
    assert source.config.family == family
    for key, value in state.items():
        if key.startswith("text_hidden_fcs."):
            assert key not in source.pieces  # new in Sa2VA: a training delta provides it
        else:
            assert torch.equal(source.tensor(key), value), key


# --- errors ---------------------------------------------------------------------------------


def _copy_export(root: Path, tmp_path: Path) -> Path:
    target = tmp_path / "hf"
    shutil.copytree(root / "hf", target)
    return target


def _rewrite_shard(directory: Path, change, containing: str | None = None) -> None:
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    shard = (
        index["weight_map"][containing]
        if containing
        else sorted(set(index["weight_map"].values()))[0]
    )
    tensors = load_file(str(directory / shard))
    change(tensors)
    save_file(tensors, str(directory / shard))
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != shard}
    index["weight_map"].update(dict.fromkeys(tensors, shard))
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))


def test_missing_and_unexpected_keys_are_listed(internvl_setup, tmp_path):
    _, _, _, root = internvl_setup
    hf = _copy_export(root, tmp_path)
    removed = []

    def drop_two(tensors):
        for key in sorted(k for k in tensors if "sam_mask_decoder" in k)[:2]:
            removed.append(key)
            del tensors[key]
        tensors["grounding_encoder.sam2_model.sam_mask_decoder.mystery.weight"] = torch.zeros(2)

    _rewrite_shard(hf, drop_two)
    with pytest.raises(CheckpointError) as info:
        ckpt.read_official_hf_export(hf)
    message = str(info.value)
    assert "partial load" in message and "mystery.weight" in message
    _rewrite_shard(
        hf, lambda t: t.pop("grounding_encoder.sam2_model.sam_mask_decoder.mystery.weight")
    )
    with pytest.raises(CheckpointError) as info:
        ckpt.read_official_hf_export(hf)
    message = str(info.value)
    assert "2 model parameter(s) are not in the checkpoint" in message
    assert "sam2.mask_decoder." in message


def test_shape_mismatch_is_reported(internvl_setup, tmp_path):
    _, _, _, root = internvl_setup
    hf = _copy_export(root, tmp_path)
    key = "text_hidden_fcs.2.bias"
    _rewrite_shard(hf, lambda t: t.__setitem__(key, torch.zeros(3)), containing=key)
    with pytest.raises(CheckpointError, match=r"text_hidden_fcs\.2\.bias: found \(3,\)"):
        ckpt.read_official_hf_export(hf)


def test_truncated_shard_names_the_file(internvl_setup, tmp_path):
    _, _, _, root = internvl_setup
    hf = _copy_export(root, tmp_path)
    shard = sorted(hf.glob("model-*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=rf"{shard.name}.*truncated or corrupt"):
        ckpt.read_official_hf_export(hf)


def test_delta_with_unknown_or_foreign_keys_is_refused(internvl_setup, tmp_path):
    family, model, _, root = internvl_setup
    trained, _ = make_training_delta(model, family, r=R, alpha=ALPHA)
    trained["mllm.model.something_new.weight"] = torch.zeros(2)
    path = tmp_path / "iter_1.pth"
    write_iter_checkpoint(path, trained, R, ALPHA)
    base = ckpt.read_model_source(root / "hf")
    with pytest.raises(CheckpointError, match=r"no key map knows: mllm\.model\.something_new"):
        ckpt.merged_weights(base, ckpt.read_trained_checkpoint(path))


def test_lora_without_alpha_asks_for_it(internvl_setup, tmp_path):
    family, model, _, root = internvl_setup
    trained, reference = make_training_delta(model, family, r=R, alpha=ALPHA)
    path = tmp_path / "iter_2.pth"
    torch.save({"state_dict": trained, "meta": {"iter": 2}}, path)
    base = ckpt.read_model_source(root / "hf")
    with pytest.raises(CheckpointError, match="--lora-alpha"):
        ckpt.merged_weights(base, ckpt.read_trained_checkpoint(path))
    checkpoint = ckpt.read_trained_checkpoint(path, lora_alpha=ALPHA)
    _assert_weights_equal(ckpt.merged_weights(base, checkpoint), reference)


def test_lora_with_mixed_ranks_is_refused_with_the_real_cause(internvl_setup, tmp_path):
    family, model, _, root = internvl_setup
    trained, _ = make_training_delta(model, family, r=R, alpha=ALPHA)
    key_a = [k for k in trained if ".lora_A." in k][-1]  # the rank is read from the first
    key_b = key_a.replace(".lora_A.", ".lora_B.")
    trained[key_a], trained[key_b] = trained[key_a][: R - 1], trained[key_b][:, : R - 1]
    path = tmp_path / "iter_4.pth"
    write_iter_checkpoint(path, trained, R, ALPHA)
    base = ckpt.read_model_source(root / "hf")
    with pytest.raises(CheckpointError, match=r"rank\(s\) \[3, 4\].*one rank") as info:
        ckpt.merged_weights(base, ckpt.read_trained_checkpoint(path))
    assert "--lora-r" not in str(info.value)  # no such option


def test_zero3_with_a_missing_rank_shard(internvl_setup, tmp_path):
    family, model, _, _ = internvl_setup
    trained, _ = make_training_delta(model, family, r=R, alpha=ALPHA)
    folder = tmp_path / "iter_9.pth"
    write_deepspeed_zero3(folder, trained, world_size=2, r=R, alpha=ALPHA)
    (folder / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    with pytest.raises(CheckpointError, match="2 ranks but 1"):
        ckpt.read_trained_checkpoint(folder)


def test_training_checkpoint_needs_a_base(internvl_setup, tmp_path):
    family, model, _, _ = internvl_setup
    trained, _ = make_training_delta(model, family, r=R, alpha=ALPHA)
    path = tmp_path / "iter_3.pth"
    write_iter_checkpoint(path, trained, R, ALPHA)
    checkpoint = ckpt.read_trained_checkpoint(path)
    with pytest.raises(CheckpointError, match="--base DIR"):
        ckpt.resolve_base(checkpoint, None, None, None)


def test_detect_format(internvl_setup, tmp_path):
    _, _, _, root = internvl_setup
    assert ckpt.detect_format(root / "hf") == "official_hf"
    with pytest.raises(CheckpointError, match="not a checkpoint vesselctl knows"):
        ckpt.detect_format(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(CheckpointError, match="unknown checkpoint file type"):
        ckpt.detect_format(tmp_path / "notes.txt")


def test_base_with_smaller_vocabulary_and_tied_lm_head(tmp_path):
    """A base MLLM saved before Sa2VA's tokens were added, with lm_head tied (not in the file):
    the embedding grows to len(tokenizer) (new rows = mean row) and lm_head starts as a copy."""
    model, processor = tiny_model("internvl")
    state = model.state_dict()
    embed = "mllm.model.language_model.embed_tokens.weight"
    mllm = {
        k.removeprefix("mllm."): v
        for k, v in state.items()
        if k.startswith("mllm.") and k != "mllm.lm_head.weight"
    }
    mllm[embed.removeprefix("mllm.")] = state[embed][:-5].clone()
    mllm_dir = tmp_path / "base-mllm"
    mllm_dir.mkdir()
    save_file({k: v.contiguous() for k, v in mllm.items()}, str(mllm_dir / "model.safetensors"))
    config = model.config.mllm_config.to_dict()
    config["text_config"]["tie_word_embeddings"] = True
    (mllm_dir / "config.json").write_text(json.dumps(config))
    processor.tokenizer.save_pretrained(mllm_dir)
    sam2 = to_official({k: v for k, v in state.items() if k.startswith("sam2.")}, "sam2_original")
    torch.save({"model": sam2}, tmp_path / "sam2.pt")

    source = ckpt.read_base_checkpoints(mllm_dir, tmp_path / "sam2.pt")
    grown = source.tensor(embed)
    assert grown.shape == state[embed].shape
    assert torch.equal(grown[:-5], state[embed][:-5])
    torch.testing.assert_close(grown[-1], state[embed][:-5].mean(dim=0))
    assert torch.equal(source.tensor("mllm.lm_head.weight"), grown)
    report = source.reports[0]
    assert report.resized[embed] == (len(grown) - 5, len(grown))
    assert report.aliased == {"mllm.lm_head.weight": embed}


def test_vesselctl_step_matches_peft_merge_and_unload(internvl_setup, tmp_path):
    """A real peft-wrapped model (LoRA + trainable token rows, as `train` builds it): the
    converted weights equal peft's own merge_and_unload."""
    import copy

    from peft import LoraConfig, get_peft_model

    _, model, _, root = internvl_setup
    embed, lm_head = "mllm.model.language_model.embed_tokens", "mllm.lm_head"
    rows = [3, 7, 11]
    config = LoraConfig(
        r=R,
        lora_alpha=ALPHA,
        target_modules=r".*language_model\.layers\.\d+\..*_proj",
        trainable_token_indices={embed: rows, lm_head: rows},
    )
    wrapped = get_peft_model(copy.deepcopy(model), config)
    torch.manual_seed(5)
    with torch.no_grad():
        for param in wrapped.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.1)
    trainable = {n: p.detach().clone() for n, p in wrapped.named_parameters() if p.requires_grad}
    assert any("trainable_tokens_delta" in n for n in trainable)
    step = tmp_path / "step_3"
    step.mkdir()
    save_file(trainable, str(step / "trainable.safetensors"))
    meta = {
        "format": "vesselctl-trainable/1",
        "step": 3,
        "lora": {"enabled": True, "r": R, "alpha": ALPHA, "rslora": False},
        "trainable_token_indices": {embed: rows, lm_head: rows},
    }
    (step / "trainable.json").write_text(json.dumps(meta))

    merged = ckpt.merged_weights(
        ckpt.read_model_source(root / "hf"), ckpt.read_trained_checkpoint(step)
    )
    expected = wrapped.merge_and_unload().state_dict()
    _assert_weights_equal(merged, expected, atol=1e-5)
    assert not torch.equal(
        expected[f"{embed}.weight"][rows], model.state_dict()[f"{embed}.weight"][rows]
    )


def test_run_seed_from_trainable_json_else_settings_yaml(tmp_path):
    """A preset base is rebuilt from the run's seed: trainable.json's, else settings.yaml's."""
    step = tmp_path / "run" / "checkpoints" / "step_2"
    step.mkdir(parents=True)
    save_file({"text_hidden_fcs.0.weight": torch.zeros(2, 2)}, str(step / ckpt.TRAINABLE_WEIGHTS))
    (tmp_path / "run" / "settings.yaml").write_text("seed: 123\n")
    (step / ckpt.TRAINABLE_META).write_text(json.dumps({"step": 2, "seed": 7}))
    assert ckpt.run_seed(ckpt.read_trained_checkpoint(step)) == 7
    (step / ckpt.TRAINABLE_META).write_text(json.dumps({"step": 2}))
    assert ckpt.run_seed(ckpt.read_trained_checkpoint(step)) == 123
