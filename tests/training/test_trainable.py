"""What trains on the tiny Sa2VA: LoRA on the LLM's Linear layers only, named groups, the rest
frozen; subsets and new-token training."""

from __future__ import annotations

import pytest
import torch

from vesselctl.errors import ConfigError
from vesselctl.model.presets import build_preset
from vesselctl.settings.train import LoraSettings, TrainableSettings
from vesselctl.training.trainable import SA2VA_NEW_TOKENS, apply_trainable


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_preset("tiny")


def _fresh(tiny):
    model, processor = tiny
    import copy

    return copy.deepcopy(model), processor


def test_default_recipe_groups(tiny) -> None:
    model, _ = _fresh(tiny)
    trained, report = apply_trainable(
        model, LoraSettings(), TrainableSettings(embeddings="full_copy")
    )
    names = [n for n, p in trained.named_parameters() if p.requires_grad]
    lora = [n for n in names if ".lora_" in n]
    assert lora and all(".language_model." in n for n in lora)
    assert not any("lm_head.lora" in n for n in lora)
    assert any("embed_tokens.modules_to_save" in n for n in names)
    assert any("lm_head.modules_to_save" in n for n in names)
    # frozen: vision tower, SAM2 image encoder and prompt encoder, the LLM's own weights
    for frozen in (
        "vision_tower",
        "sam2.vision_encoder",
        "sam2.prompt_encoder",
        "q_proj.base_layer",
    ):
        assert not any(frozen in n for n in names), frozen
    groups = report.groups
    assert groups["other"] == 0
    for group in ("lora", "embeddings", "lm_head", "projector", "mask_decoder", "text_hidden_fcs"):
        assert groups[group] > 0, group
    assert report.trainable == sum(groups.values()) < report.total


def test_lora_rank_and_named_targets(tiny) -> None:
    model, _ = _fresh(tiny)
    trained, report = apply_trainable(
        model,
        LoraSettings(r=4, alpha=8, targets=["q_proj", "v_proj"]),
        TrainableSettings(embeddings="full_copy"),
    )
    lora = [n for n, p in trained.named_parameters() if ".lora_A." in n]
    assert lora and all(("q_proj" in n or "v_proj" in n) for n in lora)
    assert all(p.shape[0] == 4 for n, p in trained.named_parameters() if ".lora_A." in n)
    assert "q_proj|v_proj" in report.lora_target_pattern


def test_unknown_target_lists_available(tiny) -> None:
    model, _ = _fresh(tiny)
    with pytest.raises(ConfigError, match=r"available: .*q_proj"):
        apply_trainable(
            model, LoraSettings(targets=["qkv"]), TrainableSettings(embeddings="full_copy")
        )


def test_groups_off_and_new_token_rows(tiny) -> None:
    model, processor = _fresh(tiny)
    vocab = processor.tokenizer.get_vocab()
    ids = [vocab[t] for t in SA2VA_NEW_TOKENS]
    trained, report = apply_trainable(
        model,
        LoraSettings(enabled=False),
        TrainableSettings(projector=False, mask_decoder=False, embeddings="new_tokens"),
        ids,
    )
    groups = report.groups
    assert groups["lora"] == 0 and groups["projector"] == 0 and groups["mask_decoder"] == 0
    assert groups["text_hidden_fcs"] > 0
    hidden = model.config.llm_hidden_size
    assert groups["embeddings"] == len(ids) * hidden  # only the new rows train
    assert report.trainable_token_indices is not None
    assert report.name_prefix == "base_model.model." and trained is not model


def test_sam2_image_encoder_group_is_off_by_default_and_trains_when_asked(tiny) -> None:
    model, _ = _fresh(tiny)
    _, report = apply_trainable(model, LoraSettings(), TrainableSettings(embeddings="full_copy"))
    assert report.groups["sam2_image_encoder"] == 0
    model, _ = _fresh(tiny)
    trained, report = apply_trainable(
        model, LoraSettings(), TrainableSettings(sam2_image_encoder=True, embeddings="full_copy")
    )
    encoder = trained.get_base_model().sam2.vision_encoder
    assert all(p.requires_grad for p in encoder.parameters())
    assert report.groups["sam2_image_encoder"] == sum(p.numel() for p in encoder.parameters())
    assert report.groups["other"] == 0
    assert not any(
        p.requires_grad for p in trained.get_base_model().sam2.prompt_encoder.parameters()
    )


def test_unresolved_auto_embeddings_are_refused(tiny) -> None:
    """'auto' is resolved by TrainSettings from model.kind; reaching apply_trainable unresolved
    would otherwise silently train no embedding rows."""
    with pytest.raises(ConfigError, match="resolved"):
        apply_trainable(_fresh(tiny)[0], LoraSettings(), TrainableSettings())


def test_new_token_layers_keep_their_index_on_the_device(tiny) -> None:
    """The new-token layers merge the same weights as peft's own method, with one index tensor
    made once (peft copies a fresh one from host memory at every forward: a GPU wait)."""
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    model, processor = _fresh(tiny)
    vocab = processor.tokenizer.get_vocab()
    ids = [vocab[t] for t in SA2VA_NEW_TOKENS]
    trained, _ = apply_trainable(
        model, LoraSettings(), TrainableSettings(embeddings="new_tokens"), ids
    )
    layers = [m for m in trained.modules() if isinstance(m, TrainableTokensLayer)]
    assert len(layers) == 2  # embeddings and LM head
    for layer in layers:
        with torch.no_grad():
            for delta in layer.trainable_tokens_delta.values():
                delta.normal_()
        adapters = list(layer.active_adapters)
        ours = layer.get_merged_weights(adapters)
        peft_own = TrainableTokensLayer.get_merged_weights(layer, adapters)
        assert torch.equal(ours, peft_own)
        assert not torch.equal(ours, layer.base_layer.weight)  # the rows were replaced
        (index,) = layer._device_token_index.values()
        layer.get_merged_weights(adapters)
        (again,) = layer._device_token_index.values()
        assert again is index and index.tolist() == ids
