"""Sa2VAModel on the tiny preset: losses, [SEG] gathering, the SAM2 prompt path, save/load."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vesselctl.errors import ModelError
from vesselctl.model.batch import Sa2VABatch, SegSample
from vesselctl.model.presets import preset_config
from vesselctl.model.sa2va import Sa2VAModel, gather_seg_hidden_states
from vesselctl.model.tokenizer import build_tiny_tokenizer

TEXT = [305, 306, 307, 308, 309]  # ordinary (non-special) token ids of the tiny tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    return Sa2VAModel(preset_config("tiny", tokenizer)).eval()


def make_batch(cfg, seg_counts, *, seed=0, pad_extra=0, with_targets=True, seg_in_padding=False):
    """A hand-built InternVL batch: per sample text, one tile of image tokens, then answers with
    ``seg_counts[i]`` [SEG]s, right-padded (``pad_extra`` more pad tokens)."""
    gen = torch.Generator().manual_seed(seed)
    img, seg = cfg.image_token_id, cfg.seg_token_id
    per_tile = cfg.image_tokens_per_tile
    rows, prompt_lens = [], []
    for n in seg_counts:
        prompt = [TEXT[0], TEXT[1], *([img] * per_tile), TEXT[2]]
        answer = []
        for _ in range(n):
            answer += [TEXT[3], seg, TEXT[4]]
        answer += [TEXT[4]]
        rows.append(prompt + answer)
        prompt_lens.append(len(prompt))
    length = max(len(r) for r in rows) + pad_extra
    pad_id = seg if seg_in_padding else 0
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), length), dtype=torch.long)
    labels = torch.full((len(rows), length), -100, dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = torch.tensor(r)
        attention[i, : len(r)] = 1
        labels[i, prompt_lens[i] : len(r)] = torch.tensor(r[prompt_lens[i] :])
    tile = cfg.tile_size
    sizes = [(40 + 3 * i, 50 + 2 * i) for i in range(len(rows))]
    gt = [
        (torch.rand(n, h, w, generator=gen) > 0.5).to(torch.uint8)
        for n, (h, w) in zip(seg_counts, sizes, strict=True)
    ]
    return Sa2VABatch(
        input_ids=input_ids,
        attention_mask=attention,
        labels=labels if with_targets else None,
        pixel_values=torch.randn(len(rows), 3, tile, tile, generator=gen),
        sam2_pixel_values=torch.randn(
            len(rows), 3, cfg.sam2_image_size, cfg.sam2_image_size, generator=gen
        ),
        gt_masks=gt if with_targets else None,
        original_sizes=sizes,
        sample_ids=[f"s{i}" for i in range(len(rows))],
    )


def _grad_names(model):
    return {n for n, p in model.named_parameters() if p.grad is not None}


def test_forward_backward_finite_and_loss_is_the_sum_of_weighted_parts(model):
    batch = make_batch(model.config, [2, 1])
    model.zero_grad()
    torch.manual_seed(1)
    out = model(batch)
    parts = [out.loss_mask, out.loss_dice, out.llm_loss]
    assert all(p is not None and torch.isfinite(p) for p in parts)
    assert torch.allclose(out.loss, sum(p.float() for p in parts), atol=1e-6)
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.text_hidden_fcs[0].weight.grad.abs().sum() > 0
    assert model.sam2.mask_decoder.mask_tokens.weight.grad.abs().sum() > 0
    assert [t.shape[0] for t in out.mask_logits] == [2, 1]
    side = model.config.mask_logits_size
    assert out.mask_logits[0].shape[1:] == (side, side)


def test_loss_weights_come_from_the_config_and_scale_each_part(model):
    batch = make_batch(model.config, [2, 1])
    cfg = model.config
    saved = (cfg.loss_bce_weight, cfg.loss_dice_weight, cfg.loss_llm_weight)
    with torch.no_grad():
        torch.manual_seed(3)
        base = model(batch)
        cfg.loss_bce_weight, cfg.loss_dice_weight, cfg.loss_llm_weight = 1.0, 3.0, 0.25
        try:
            torch.manual_seed(3)  # same sampled points
            scaled = model(batch)
        finally:
            cfg.loss_bce_weight, cfg.loss_dice_weight, cfg.loss_llm_weight = saved
    assert saved == (2.0, 0.5, 1.0)
    assert torch.allclose(scaled.loss_mask, base.loss_mask / 2.0, rtol=1e-5)
    assert torch.allclose(scaled.loss_dice, base.loss_dice * 6.0, rtol=1e-5)
    assert torch.allclose(scaled.llm_loss, base.llm_loss * 0.25, rtol=1e-5)
    assert torch.allclose(scaled.loss, scaled.loss_mask + scaled.loss_dice + scaled.llm_loss)


def test_gather_takes_every_seg_in_order_and_ignores_padding():
    seg = 7
    input_ids = torch.tensor(
        [
            [1, seg, 2, seg, seg, 3],  # three [SEG]s
            [1, 2, 3, 4, 5, 6],  # none
            [1, seg, 2, seg, seg, seg],  # one real [SEG], then [SEG]-valued padding
        ]
    )
    attention = torch.tensor([[1] * 6, [1] * 6, [1, 1, 1, 0, 0, 0]])
    hidden = torch.arange(3 * 6, dtype=torch.float32).reshape(3, 6, 1).expand(3, 6, 4)
    got = gather_seg_hidden_states(hidden, input_ids, attention, seg)
    assert got.counts == [3, 0, 1]
    assert got.image_index.tolist() == [0, 0, 0, 2]
    assert got.hidden[:, 0].tolist() == [1.0, 3.0, 4.0, 13.0]  # positions (0,1) (0,3) (0,4) (2,1)


def test_samples_are_independent_of_batch_mates_padding_and_seg_counts(model):
    batch = make_batch(model.config, [3, 0, 1], pad_extra=3, seg_in_padding=True)
    with torch.no_grad():
        together = model(batch)
        assert [t.shape[0] for t in together.mask_logits] == [3, 0, 1]
        for i in (0, 2):
            single = _select(batch, i, model.config)
            alone = model(single)
            assert torch.allclose(alone.mask_logits[0], together.mask_logits[i], atol=1e-5)
            assert torch.allclose(alone.iou_scores[0], together.iou_scores[i], atol=1e-5)


def _select(batch, i, cfg):
    length = int(batch.attention_mask[i].sum())
    return Sa2VABatch(
        input_ids=batch.input_ids[i : i + 1, :length],
        attention_mask=batch.attention_mask[i : i + 1, :length],
        labels=None if batch.labels is None else batch.labels[i : i + 1, :length],
        pixel_values=batch.pixel_values[i : i + 1],
        sam2_pixel_values=batch.sam2_pixel_values[i : i + 1],
        gt_masks=None if batch.gt_masks is None else [batch.gt_masks[i]],
        original_sizes=[batch.original_sizes[i]],
        sample_ids=[batch.sample_ids[i]],
    )


def test_batch_without_any_seg_still_runs_sam2_with_zero_mask_loss(model):
    normal = make_batch(model.config, [1, 1])
    empty = make_batch(model.config, [0, 0])
    model.zero_grad()
    model(normal).loss.backward()
    normal_grads = _grad_names(model)
    model.zero_grad()
    out = model(empty)
    assert out.loss_mask == 0 and out.loss_dice == 0
    assert torch.isfinite(out.llm_loss) and torch.allclose(out.loss, out.llm_loss)
    out.loss.backward()
    # The same parameters receive (zero) gradients, so distributed ranks reduce the same set.
    assert _grad_names(model) == normal_grads
    assert model.text_hidden_fcs[2].weight.grad is not None
    assert model.sam2.mask_decoder.upscale_conv1.weight.grad is not None


def test_one_mask_per_seg_is_enforced(model):
    batch = make_batch(model.config, [2])
    batch.gt_masks = [batch.gt_masks[0][:1]]
    with pytest.raises(ModelError, match=r"sample s0: 2 \[SEG\] token\(s\) .* 1 ground-truth"):
        model(batch)


def _hand_positional_embedding(sam2):
    """SAM's dense positional encoding from its formula: pixel centres in [0,1] -> [-1,1],
    times the Gaussian matrix, times 2 pi, then [sin, cos]; channels first."""
    gauss = sam2.shared_image_embedding.positional_embedding  # [2, C/2]
    side = sam2.prompt_encoder.image_embedding_size[0]
    centres = (torch.arange(side, dtype=torch.float32) + 0.5) / side
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    coords = torch.stack([x, y], dim=-1) * 2 - 1
    proj = 2 * math.pi * (coords @ gauss)
    return torch.cat([proj.sin(), proj.cos()], dim=-1).permute(2, 0, 1)[None]


def test_sam2_prompt_path_equals_a_hand_composed_reference(model):
    """Features, prompt tokens, dense prompt and position encoding built by hand from the weights
    and formulas; only the mask decoder's transformer is shared with the code under test."""
    sam2 = model.sam2
    gen = torch.Generator().manual_seed(5)
    images = torch.randn(
        2, 3, model.config.sam2_image_size, model.config.sam2_image_size, generator=gen
    )
    prompts = torch.randn(3, model.config.text_projection_dim, generator=gen)
    image_index = torch.tensor([0, 1, 1])
    with torch.no_grad():
        logits, iou = model.decode_masks(model.sam2_image_embeddings(images), prompts, image_index)

        # Image features: the FPN maps, conv_s0/conv_s1 on the two high-resolution ones,
        # no_memory_embedding added to the lowest-resolution one.
        fpn = sam2.vision_encoder(images).fpn_hidden_states
        s0 = sam2.mask_decoder.conv_s0(fpn[0])
        s1 = sam2.mask_decoder.conv_s1(fpn[1])
        low = fpn[2] + sam2.no_memory_embedding.reshape(1, -1, 1, 1)
        # Sparse: the empty point (label -1) and the pad point both become not_a_point_embed;
        # the [SEG] projection is the third token. Dense: the no-mask embedding everywhere.
        not_a_point = sam2.prompt_encoder.not_a_point_embed.weight[0]
        sparse = torch.stack([not_a_point.expand(3, -1), not_a_point.expand(3, -1), prompts], 1)
        side = sam2.prompt_encoder.image_embedding_size[0]
        dense = sam2.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
            3, -1, side, side
        )
        masks, scores, _, _ = sam2.mask_decoder(
            image_embeddings=low[image_index],
            image_positional_embeddings=_hand_positional_embedding(sam2).expand(3, -1, -1, -1),
            sparse_prompt_embeddings=sparse[:, None],
            dense_prompt_embeddings=dense,
            multimask_output=True,
            high_resolution_features=[s0[image_index], s1[image_index]],
        )
    assert masks.shape[2] == 3  # multimask: three candidates
    best = scores[:, 0].argmax(-1)
    expected = masks[torch.arange(3), 0, best]
    assert torch.allclose(logits, expected, atol=1e-5)
    assert torch.allclose(iou, scores[torch.arange(3), 0, best], atol=1e-6)


def test_save_pretrained_then_from_pretrained_gives_identical_outputs(model, tmp_path):
    model.save_pretrained(tmp_path, max_shard_size="2MB")
    shards = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "model.safetensors.index.json").exists()
    loaded = Sa2VAModel.from_pretrained(tmp_path).eval()
    drop = {"_name_or_path"}
    saved = {k: v for k, v in model.config.to_dict().items() if k not in drop}
    assert {k: v for k, v in loaded.config.to_dict().items() if k not in drop} == saved
    batch = make_batch(model.config, [2, 1], with_targets=False)
    with torch.no_grad():
        a, b = model(batch), loaded(batch)
    for x, y in zip(a.mask_logits, b.mask_logits, strict=True):
        assert torch.equal(x, y)
    state_a, state_b = model.state_dict(), loaded.state_dict()
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_native_submodule_names_give_the_documented_key_layout(model):
    keys = set(model.state_dict())
    assert {"text_hidden_fcs.0.weight", "text_hidden_fcs.2.bias"} <= keys
    assert "sam2.no_memory_embedding" in keys
    assert any(k.startswith("sam2.mask_decoder.") for k in keys)
    assert any(k.startswith("mllm.model.vision_tower.") for k in keys)
    assert any(k.startswith("mllm.model.language_model.layers.0.") for k in keys)
    assert "mllm.lm_head.weight" in keys


def test_llm_gradient_checkpointing_gives_the_same_gradients(tokenizer):
    torch.manual_seed(0)
    model = Sa2VAModel(preset_config("tiny", tokenizer)).train()
    batch = make_batch(model.config, [1, 2])

    def grads():
        model.zero_grad()
        torch.manual_seed(4)
        model(batch).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.set_llm_gradient_checkpointing(True)
    assert model.llm_gradient_checkpointing
    checkpointed = grads()
    model.set_llm_gradient_checkpointing(False)
    assert not model.llm_gradient_checkpointing
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-5), name


def test_qwen2_5_vl_family_trains_with_mrope_positions(tokenizer):
    torch.manual_seed(0)
    model = Sa2VAModel(preset_config("tiny-qwen2.5-vl", tokenizer))
    cfg = model.config
    vs, ve = cfg.mllm_config.vision_start_token_id, cfg.mllm_config.vision_end_token_id
    img, seg = cfg.image_token_id, cfg.seg_token_id
    row = [TEXT[0], vs, *([img] * 4), ve, TEXT[1], seg, TEXT[2]]
    ids = torch.tensor([row, row])
    labels = ids.clone()
    labels[:, :8] = -100
    batch = Sa2VABatch(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        labels=labels,
        pixel_values=torch.randn(32, 3 * 2 * 14 * 14),  # two 56x56 images: grid 1x4x4 each
        image_grid_thw=torch.tensor([[1, 4, 4], [1, 4, 4]]),
        sam2_pixel_values=torch.randn(2, 3, 128, 128),
        gt_masks=[torch.ones(1, 20, 20), torch.zeros(1, 20, 20)],
    )
    out = model(batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.text_hidden_fcs[0].weight.grad.abs().sum() > 0
    # 3D (mrope) positions need the image-token types: without them the output changes.
    with torch.no_grad():
        with_types = model.mllm_hidden_states(batch)
        plain = model.mllm.model(
            input_ids=ids,
            attention_mask=batch.attention_mask,
            pixel_values=batch.pixel_values,
            image_grid_thw=batch.image_grid_thw,
        ).last_hidden_state
    if model._mllm_takes_mm_token_types():
        assert not torch.allclose(with_types, plain, atol=1e-4)
    assert np.isfinite(with_types.numpy()).all()


def test_letterbox_targets_are_placed_where_sam2_sees_the_object(tokenizer, monkeypatch):
    """With a letterboxed SAM2 input the ground truth must go into the content region of the
    logit frame: a decoder that segments the object perfectly then has a small mask loss."""
    import torch.nn.functional as F

    from vesselctl.model.processor import Sa2VAProcessor
    from vesselctl.model.tiling import masks_to_sam2_frame

    torch.manual_seed(0)
    model = Sa2VAModel(preset_config("tiny", tokenizer)).eval()
    height, width = 40, 120
    image = np.zeros((height, width, 3), np.uint8)
    image[6:30, 60:110] = 255
    mask = image[:, :, 0] > 0
    sample = SegSample("rect", image, ["vessels"], [mask])
    batch = Sa2VAProcessor(tokenizer, model.config, sam2_resize="letterbox")([sample], train=True)
    side = model.config.mask_logits_size
    bright = (batch.sam2_pixel_values[:, 0:1] > 1.0).float()
    perfect = (F.adaptive_avg_pool2d(bright, side)[:, 0] * 2.0 - 1.0) * 10.0

    def decode(image_embeddings, prompts, image_index):
        return perfect.index_select(0, image_index) + prompts.sum() * 0.0, prompts[:, 0] * 0.0

    monkeypatch.setattr(model, "decode_masks", decode)
    frames = model.sam2_frames(batch)
    assert frames[0].content != (frames[0].size, frames[0].size)
    targets = model._aligned_targets(batch.gt_masks, frames, perfect)
    agreement = ((perfect > 0) == (targets > 0.5)).float().mean()
    assert agreement > 0.97
    with torch.no_grad():
        aligned = model(batch).loss_mask
        batch.sam2_frames = []  # the square assumption on the same letterboxed input
        misaligned = model(batch).loss_mask
    assert aligned < 0.25 * misaligned
    # Square frames keep the official nearest resize, bit for bit.
    square = model.sam2_frames(batch)[0]
    official = F.interpolate(batch.gt_masks[0][:, None], size=(side, side), mode="nearest")[:, 0]
    assert torch.equal(masks_to_sam2_frame(batch.gt_masks[0], square, side), official)


def test_checkpointing_with_lora_keeps_frozen_encoders_out_of_autograd(tokenizer):
    """peft asks for input gradients when checkpointing is on; only the LLM's input may get
    them, or autograd keeps every activation of the frozen SAM2 and vision encoders."""
    from vesselctl.settings.train import TrainSettings
    from vesselctl.training.trainable import apply_trainable

    torch.manual_seed(0)
    model = Sa2VAModel(preset_config("tiny", tokenizer)).train()
    model.set_llm_gradient_checkpointing(True)  # before wrapping, as train does when set on
    settings = TrainSettings()
    trained, _ = apply_trainable(model, settings.lora, settings.trainable, None)
    seen: dict[str, bool] = {}

    def record(name):
        def hook(module, args, output):
            tensor = output if isinstance(output, torch.Tensor) else output[0]
            seen[name] = tensor.requires_grad

        return hook

    model.sam2.vision_encoder.get_input_embeddings().register_forward_hook(record("sam2"))
    model.mllm.model.vision_tower.get_input_embeddings().register_forward_hook(record("vision"))
    model.mllm.model.language_model.embed_tokens.register_forward_hook(record("llm"))
    trained(make_batch(model.config, [1, 2])).loss.backward()
    assert seen == {"sam2": False, "vision": False, "llm": True}
    lora_grads = [p.grad for n, p in trained.named_parameters() if "lora_" in n]
    assert lora_grads and all(g is not None for g in lora_grads)


def test_positions_found_by_the_processor_give_the_same_forward(tokenizer):
    """The processor's CPU-side [SEG] and supervised positions (no GPU sync in the forward)
    give exactly the losses and logits the model gets by finding them itself."""
    import dataclasses
    import random

    from vesselctl.model.processor import Sa2VAProcessor

    torch.manual_seed(0)
    model = Sa2VAModel(preset_config("tiny", tokenizer)).train()
    processor = Sa2VAProcessor.from_config(model.config, tokenizer, max_tiles=1)
    rng = np.random.default_rng(0)
    samples = [
        SegSample(
            f"s{i}",
            rng.integers(0, 256, (40 + 8 * i, 48, 3), dtype=np.uint8),
            ["vessels", "arteries"][: 1 + i % 2],
            [rng.random((40 + 8 * i, 48)) > 0.5 for _ in range(1 + i % 2)],
        )
        for i in range(3)
    ]
    batch = processor(samples, train=True, rng=random.Random(0))
    assert batch.seg_counts == [1, 2, 1] and batch.seg_positions.shape == (4, 2)
    plain = dataclasses.replace(
        batch, seg_positions=None, seg_counts=None, supervised_positions=None
    )
    torch.manual_seed(3)
    with_positions = model(batch)
    torch.manual_seed(3)
    without = model(plain)
    for name in ("loss", "loss_mask", "loss_dice", "llm_loss"):
        assert torch.equal(getattr(with_positions, name), getattr(without, name)), name
    for a, b in zip(with_positions.mask_logits, without.mask_logits, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("vision_feature_layer", [-1, -2])
def test_image_features_at_cpu_found_positions_match_transformers_forward(
    tokenizer, vision_feature_layer
):
    """InternVL batches carry their image-token positions; the model puts the image features
    there (no masked_scatter, no GPU wait) and gets exactly transformers' hidden states and
    gradients, for samples with different tile counts in one batch, with the vision feature
    layer the MLLM config names."""
    import dataclasses

    from vesselctl.model.processor import Sa2VAProcessor

    torch.manual_seed(0)
    config = preset_config("tiny", tokenizer)
    config.mllm_config.vision_feature_layer = vision_feature_layer
    model = Sa2VAModel(config).train()
    processor = Sa2VAProcessor.from_config(model.config, tokenizer, max_tiles=4)
    rng = np.random.default_rng(1)
    samples = [
        SegSample(f"s{i}", rng.integers(0, 256, shape, dtype=np.uint8), ["vessels"], None)
        for i, shape in enumerate([(64, 64, 3), (64, 160, 3)])  # 1 and several tiles
    ]
    batch = processor(samples, train=False)
    image_tokens = (batch.input_ids == model.config.image_token_id).sum(dim=1)
    assert image_tokens[0] != image_tokens[1]
    assert batch.image_positions.shape == (int(image_tokens.sum()), 2)
    plain = dataclasses.replace(batch, image_positions=None)

    def hidden_and_grads(b):
        model.zero_grad(set_to_none=True)
        hidden = model.mllm_hidden_states(b)
        hidden.square().mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return hidden.detach(), grads

    ours, our_grads = hidden_and_grads(batch)
    theirs, their_grads = hidden_and_grads(plain)
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert our_grads.keys() == their_grads.keys()
    assert any("multi_modal_projector" in n for n in our_grads)
    for name, grad in our_grads.items():
        assert torch.allclose(grad, their_grads[name], atol=1e-6), name

    short = dataclasses.replace(batch, image_positions=batch.image_positions[1:])
    with pytest.raises(ModelError, match="image tokens but the vision tower gave"):
        model.mllm_hidden_states(short)
