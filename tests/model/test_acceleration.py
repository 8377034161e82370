"""Speed switches change nothing but speed: the same losses and gradients (fp32, tiny preset)
with the encoder cache, compiled LLM layers, new-token rows instead of full embedding copies, and
gradient checkpointing; plus their refusals and the compile fallback."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vesselctl.errors import ConfigError, ModelError
from vesselctl.model.acceleration import (
    FrozenEncoderCache,
    any_block_compiled,
    attach_encoder_keys,
    check_encoder_cache_allowed,
    choose_gradient_checkpointing,
    compile_blocks,
    compile_trained_path,
    enable_encoder_cache,
    is_compile_failure,
    probe_train_step,
    uncompile_blocks,
)
from vesselctl.model.batch import SegSample
from vesselctl.model.presets import build_preset


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model, processor = build_preset("tiny")
    return model.train(), processor


def _samples(n=3, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = 40 + 8 * i, 56
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        out.append(SegSample(f"s{i}", image, ["vessels"], [rng.random((h, w)) > 0.6]))
    return out


def _loss_and_grads(model, batch, seed=7):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the mask losses sample points at random
    out = model(batch)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    parts = [out.loss_mask.detach(), out.loss_dice.detach(), out.llm_loss.detach()]
    return torch.stack(parts), grads


def _assert_same(a, b, atol=1e-5):
    loss_a, grads_a = a
    loss_b, grads_b = b
    assert torch.allclose(loss_a, loss_b, atol=atol, rtol=0), (loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=atol, rtol=1e-4), name


def _freeze_encoders(model):
    model.requires_grad_(True)
    model.mllm.model.vision_tower.requires_grad_(False)
    model.sam2.vision_encoder.requires_grad_(False)


def test_encoder_cache_gives_the_same_losses_and_gradients(tiny):
    model, processor = tiny
    _freeze_encoders(model)
    batch = attach_encoder_keys(
        processor(_samples(), train=True, rng=__import__("random").Random(0))
    )
    plain = _loss_and_grads(model, batch)
    cache = FrozenEncoderCache(storage="cpu")
    enable_encoder_cache(model, cache)
    try:
        first = _loss_and_grads(model, batch)  # misses: computed and stored
        assert cache.stats.misses == len(batch.vision_keys) + len(batch.sam2_keys)
        second = _loss_and_grads(model, batch)  # hits: served from the cache
        assert cache.stats.hits == len(batch.vision_keys) + len(batch.sam2_keys)
        # A batch mixing cached and new images.
        mixed = processor([*_samples(1), *_samples(1, seed=5)], train=True)
        mixed = attach_encoder_keys(mixed)
        with_cache_mixed = _loss_and_grads(model, mixed)
    finally:
        enable_encoder_cache(model, None)
    _assert_same(plain, first, atol=1e-6)
    _assert_same(plain, second, atol=1e-6)
    _assert_same(_loss_and_grads(model, mixed), with_cache_mixed, atol=1e-6)


def test_encoder_cache_refuses_trainable_encoders_stale_keys_and_augmentation(tiny):
    model, processor = tiny
    model.requires_grad_(True)
    with pytest.raises(ConfigError, match="encoder parameter"):
        enable_encoder_cache(model, FrozenEncoderCache(storage="cpu"))
    with pytest.raises(ConfigError, match="augment"):
        check_encoder_cache_allowed(augment_enabled=True)
    check_encoder_cache_allowed(augment_enabled=False)
    _freeze_encoders(model)
    batch = attach_encoder_keys(processor(_samples(2), train=True))
    batch.sam2_keys = batch.sam2_keys[:1]
    enable_encoder_cache(model, FrozenEncoderCache(storage="cpu"))
    try:
        with pytest.raises(ModelError, match="stale"):
            model(batch)
    finally:
        enable_encoder_cache(model, None)


def test_equal_images_share_keys_and_different_ones_do_not(tiny):
    _, processor = tiny
    a = attach_encoder_keys(processor(_samples(2), train=True))
    b = attach_encoder_keys(processor(_samples(2), train=True))
    c = attach_encoder_keys(processor(_samples(2, seed=1), train=True))
    assert a.sam2_keys == b.sam2_keys and a.vision_keys == b.vision_keys
    assert not set(a.sam2_keys) & set(c.sam2_keys)


def test_compiled_trained_path_gives_the_same_losses_and_gradients(tiny):
    model, processor = tiny
    model.requires_grad_(True)
    batch = processor(_samples(2), train=True)
    plain = _loss_and_grads(model, batch)
    torch._dynamo.reset()
    # Every repeated block is found (tracing happens at the first call; only the LLM and the mask
    # decoder run here, the encoders' compiled run is exercised by benchmarks/perf.py).
    everything = ("llm", "mask_decoder", "mask_losses", "vision", "sam2")
    assert compile_blocks(model, everything, backend="aot_eager") == 2 + 5 + 1 + 2 + 5
    uncompile_blocks(model)
    assert not any_block_compiled(model)
    # The two LLM layers, the mask decoder's transformer, its 4 hypernetwork MLPs, the losses.
    assert compile_trained_path(model, backend="aot_eager") == 2 + 5 + 1
    try:
        assert any_block_compiled(model)
        compiled = _loss_and_grads(model, batch)
    finally:
        uncompile_blocks(model)
        torch._dynamo.reset()
    assert not any_block_compiled(model)
    _assert_same(plain, compiled)


def _broken_backend(graph_module, example_inputs):
    """A torch.compile backend that always fails, as a missing compiler would."""
    raise RuntimeError("no compiler here")


def test_a_failing_compile_falls_back_to_eager_with_a_warning(tiny):
    model, processor = tiny
    model.requires_grad_(True)
    batch = processor(_samples(2), train=True)
    plain = _loss_and_grads(model, batch)

    torch._dynamo.reset()
    compile_trained_path(model, backend=_broken_backend)
    try:
        with pytest.warns(RuntimeWarning, match="running them eagerly"):
            reason = probe_train_step(model, lambda: _loss_and_grads(model, batch))
        assert reason is not None and "no compiler here" in reason
        assert not any_block_compiled(model)
        _assert_same(plain, _loss_and_grads(model, batch), atol=0)
    finally:
        uncompile_blocks(model)
        torch._dynamo.reset()


@pytest.mark.parametrize("part", ["mask_decoder", "mask_losses"])
def test_each_compiled_region_falls_back_in_the_forward_without_a_probe(tiny, part):
    """Without the probe step (DeepSpeed, gradient_checkpointing set), the forward itself must
    fall back when a region's compile fails, whichever region fails first; the losses are the
    eager ones (the mask losses' random points are drawn once, outside the retried part)."""
    model, processor = tiny
    model.requires_grad_(True)
    batch = processor(_samples(2), train=True)
    plain = _loss_and_grads(model, batch)

    torch._dynamo.reset()
    compile_blocks(model, (part,), backend=_broken_backend)
    try:
        with pytest.warns(RuntimeWarning, match="running them eagerly"):
            fell_back = _loss_and_grads(model, batch)
        assert not any_block_compiled(model)
        _assert_same(plain, fell_back, atol=0)
    finally:
        uncompile_blocks(model)
        torch._dynamo.reset()


def test_model_errors_are_not_mistaken_for_compile_failures():
    assert not is_compile_failure(ValueError("shape mismatch"))


def test_gradient_checkpointing_choice_is_off_on_cpu(tiny):
    model, _ = tiny
    choice = choose_gradient_checkpointing(model, lambda: None, torch.device("cpu"))
    assert not choice.enabled and not model.llm_gradient_checkpointing


def test_new_token_rows_train_with_the_same_loss_as_full_copies(tiny):
    """peft trainable_token_indices instead of modules_to_save copies: same forward, and the
    new tokens' rows get the same gradient (the full copies' other rows are the waste)."""
    from vesselctl.settings.train import LoraSettings, TrainableSettings
    from vesselctl.training.trainable import apply_trainable

    _, processor = tiny
    batch = processor(_samples(2), train=True)
    results = {}
    for mode in ("full_copy", "new_tokens"):
        torch.manual_seed(0)
        model, _ = build_preset("tiny")
        seg = model.config.seg_token_id
        lora = LoraSettings(dropout=0.0)
        peft_model, _ = apply_trainable(
            model.train(), lora, TrainableSettings(embeddings=mode), [seg]
        )
        # LoRA B starts at zero: give it values so the adapters matter.
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(
                    p, std=0.02, generator=torch.Generator().manual_seed(len(name))
                )
        loss, grads = _loss_and_grads(peft_model, batch)
        embed = {n: g for n, g in grads.items() if "embed_tokens" in n}
        results[mode] = (loss, grads, embed, seg)
    full_loss, full_grads, full_embed, seg = results["full_copy"]
    new_loss, new_grads, new_embed, _ = results["new_tokens"]
    assert torch.allclose(full_loss, new_loss, atol=1e-6, rtol=0)
    lora_names = [n for n in full_grads if ".lora_" in n]
    assert lora_names
    for name in lora_names:
        assert torch.allclose(full_grads[name], new_grads[name], atol=1e-6, rtol=1e-5), name
    (full_row,) = [g[seg] for g in full_embed.values()]
    (delta,) = new_embed.values()
    assert torch.allclose(full_row, delta[0], atol=1e-6)


def test_model_compile_setting_compiles_the_chosen_blocks():
    from vesselctl.model.acceleration import compiled_blocks
    from vesselctl.model.load import load_model
    from vesselctl.settings.model import ModelSourceSettings

    def compiled(model, part):
        return [b._compiled_call_impl is not None for b in compiled_blocks(model, (part,))]

    model, _ = load_model(ModelSourceSettings(compile="off", dtype="float32"))
    assert not any_block_compiled(model)
    model, _ = load_model(ModelSourceSettings(compile="llm", dtype="float32"))
    assert all(compiled(model, "llm") + compiled(model, "mask_decoder"))
    assert not any(compiled(model, "sam2") + compiled(model, "vision"))
    model, _ = load_model(ModelSourceSettings(compile="all", dtype="float32"))
    assert all(compiled(model, "llm") + compiled(model, "vision") + compiled(model, "sam2"))
    uncompile_blocks(model)


def _cpp_compiler_available() -> bool:
    import shutil

    return any(shutil.which(name) for name in ("g++", "c++", "clang++"))


@pytest.mark.skipif(not _cpp_compiler_available(), reason="inductor on CPU needs a C++ compiler")
def test_compiled_mask_decoder_gives_eager_gradients_for_a_single_prompt(tiny):
    """torch's CPU inductor specialises the decoder for one prompt and got its input gradients
    wrong there (about 1.3x relative error); decode_masks decodes a copy beside a lone prompt."""
    import copy

    model, processor = tiny
    batch = processor(_samples(1), train=True)
    with torch.no_grad():
        maps = [m.detach() for m in model.sam2_image_embeddings(batch.sam2_pixel_values)]
    prompt = torch.randn(
        1, model.config.text_projection_dim, generator=torch.Generator().manual_seed(0)
    )
    index = torch.zeros(1, dtype=torch.long)

    def grads(m):
        inputs = [x.clone().requires_grad_(True) for x in (*maps, prompt)]
        logits, _ = m.decode_masks(inputs[:-1], inputs[-1], index)
        weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(1))
        (logits * weights).sum().backward()
        return logits.detach(), [x.grad for x in inputs]

    eager_logits, eager_grads = grads(model)
    compiled = copy.deepcopy(model)
    torch._dynamo.reset()
    try:
        compile_blocks(compiled, ("mask_decoder",))
        compiled_logits, compiled_grads = grads(compiled)
    finally:
        uncompile_blocks(compiled)
        torch._dynamo.reset()
    assert torch.allclose(compiled_logits, eager_logits, atol=1e-4)
    for want, got in zip(eager_grads, compiled_grads, strict=True):
        assert float((got - want).abs().max()) <= 1e-3 * float(want.abs().max()) + 1e-8
