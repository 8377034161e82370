"""Named model architectures: ``tiny`` (random weights, seconds on CPU) and the real Sa2VA sizes.

Real-size presets reproduce the released architectures (shapes from sa2va.md: InternVL2.5-1B/4B,
InternVL3-2B, Qwen2.5-VL-3B, SAM2 Hiera-L) so random-weight benchmarks measure the real cost and
official weights have a target to load into. When official weights are loaded, the config read
from their directory wins over these (vocabulary sizes in particular).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vesselctl.errors import ModelError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from vesselctl.model.config import Sa2VAConfig
    from vesselctl.model.processor import Sa2VAProcessor
    from vesselctl.model.sa2va import Sa2VAModel

#: Base InternVL2.5 / InternVL3 tokenizer length (Qwen2.5 + InternVL's image/box tokens);
#: Sa2VA appends [SEG], <p>, </p>, <vp>, </vp> and resizes the embeddings to len(tokenizer).
INTERNVL_BASE_VOCAB = 151674
INTERNVL_IMG_CONTEXT_ID = 151667
#: Qwen2.5-VL: the base tokenizer has 151665 tokens (embeddings padded to 151936).
QWEN_BASE_VOCAB = 151665
QWEN_EMBED_ROWS = 151936
QWEN_IMAGE_PAD_ID = 151655
SA2VA_NEW_TOKENS = 5

#: Processor options of the tiny presets that differ from the released models' defaults.
TINY_PROCESSOR_OVERRIDES: dict[str, dict[str, int]] = {
    "tiny-qwen2.5-vl": {"min_pixels": 4 * 28 * 28, "max_pixels": 64 * 28 * 28},
}

PRESETS = (
    "tiny",
    "tiny-qwen2.5-vl",
    "sa2va-1b",
    "sa2va-4b",
    "sa2va-internvl3-2b",
    "sa2va-qwen2.5-vl-3b",
)


# --- SAM2 -------------------------------------------------------------------------------------


def sam2_hiera_large_config() -> Any:
    """SAM 2.0 Hiera-L at 1024x1024, the grounding encoder of every released Sa2VA."""
    from transformers import (
        Sam2Config,
        Sam2HieraDetConfig,
        Sam2MaskDecoderConfig,
        Sam2PromptEncoderConfig,
        Sam2VisionConfig,
    )

    dims = [144, 288, 576, 1152]
    backbone = Sam2HieraDetConfig(
        hidden_size=144,
        num_attention_heads=2,
        image_size=[1024, 1024],
        blocks_per_stage=[2, 6, 36, 4],
        embed_dim_per_stage=dims,
        num_attention_heads_per_stage=[2, 4, 8, 16],
        window_size_per_stage=[8, 4, 16, 8],
        global_attention_blocks=[23, 33, 43],
        window_positional_embedding_background_size=[7, 7],
    )
    vision = Sam2VisionConfig(
        backbone_config=backbone,
        backbone_channel_list=list(reversed(dims)),
        backbone_feature_sizes=[[256, 256], [128, 128], [64, 64]],
        fpn_hidden_size=256,
    )
    return Sam2Config(
        vision_config=vision,
        prompt_encoder_config=Sam2PromptEncoderConfig(image_size=1024, patch_size=16),
        mask_decoder_config=Sam2MaskDecoderConfig(),
    )


def sam2_tiny_config(image_size: int = 128) -> Any:
    """A very small Hiera trunk at ``image_size`` with the real 256-wide prompt path.

    Stages [1,1,2,1] with the global block at index 3: a global block must not open a stage that
    pools queries (sa2va.md). Feature sizes, channel list and prompt-encoder size move together.
    """
    from transformers import (
        Sam2Config,
        Sam2HieraDetConfig,
        Sam2MaskDecoderConfig,
        Sam2PromptEncoderConfig,
        Sam2VisionConfig,
    )

    if image_size % 64:
        raise ModelError(f"tiny SAM2 image_size must be a multiple of 64, found {image_size}")
    dims = [8, 16, 32, 64]
    backbone = Sam2HieraDetConfig(
        hidden_size=8,
        num_attention_heads=1,
        image_size=[image_size, image_size],
        blocks_per_stage=[1, 1, 2, 1],
        embed_dim_per_stage=dims,
        num_attention_heads_per_stage=[1, 1, 2, 2],
        window_size_per_stage=[4, 4, 4, 4],
        global_attention_blocks=[3],
        window_positional_embedding_background_size=[4, 4],
    )
    s = image_size
    vision = Sam2VisionConfig(
        backbone_config=backbone,
        backbone_channel_list=list(reversed(dims)),
        backbone_feature_sizes=[[s // 4, s // 4], [s // 8, s // 8], [s // 16, s // 16]],
        fpn_hidden_size=256,
    )
    return Sam2Config(
        vision_config=vision,
        prompt_encoder_config=Sam2PromptEncoderConfig(image_size=s, patch_size=16),
        mask_decoder_config=Sam2MaskDecoderConfig(mlp_dim=64, iou_head_hidden_dim=32),
    )


# --- MLLMs ------------------------------------------------------------------------------------


def _internvl_config(
    *,
    vision: dict[str, Any],
    text: dict[str, Any],
    image_token_id: int,
    image_size: int = 448,
    patch_size: int = 14,
) -> Any:
    from transformers import InternVLConfig, InternVLVisionConfig, Qwen2Config

    vision_config = InternVLVisionConfig(
        image_size=[image_size, image_size], patch_size=[patch_size, patch_size], **vision
    )
    text_config = Qwen2Config(tie_word_embeddings=False, **text)
    side = image_size // patch_size
    return InternVLConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=image_token_id,
        image_seq_length=int((side * 0.5) ** 2),
        downsample_ratio=0.5,
        tie_word_embeddings=False,
    )


def _qwen25vl_config(*, vision: dict[str, Any], text: dict[str, Any], token_ids: dict) -> Any:
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(
        vision_config=vision,
        text_config=text,
        tie_word_embeddings=text.get("tie_word_embeddings", False),
        **token_ids,
    )


# InternViT-300M (InternVL2.5-1B/4B and InternVL3-2B vision tower).
_INTERNVIT_300M = dict(
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    norm_type="layer_norm",
    layer_scale_init_value=0.1,
    use_absolute_position_embeddings=True,
)


def _real_internvl(text: dict[str, Any]) -> Any:
    vocab = INTERNVL_BASE_VOCAB + SA2VA_NEW_TOKENS
    return _internvl_config(
        vision=_INTERNVIT_300M,
        text=dict(vocab_size=vocab, max_position_embeddings=32768, rope_theta=1_000_000.0, **text),
        image_token_id=INTERNVL_IMG_CONTEXT_ID,
    )


#: The InternVL-based presets differ only in their Qwen2.5 LLM's shape and chat template.
_INTERNVL_PRESETS: dict[str, tuple[dict[str, int], str]] = {
    "sa2va-1b": (
        dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
             num_key_value_heads=2, intermediate_size=4864),
        "qwen_chat",
    ),
    "sa2va-4b": (
        dict(hidden_size=2048, num_hidden_layers=36, num_attention_heads=16,
             num_key_value_heads=2, intermediate_size=11008),
        "phi3_chat",
    ),
    "sa2va-internvl3-2b": (
        dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12,
             num_key_value_heads=2, intermediate_size=8960),
        "qwen_chat",
    ),
}  # fmt: skip


def _real_preset_config(name: str) -> Sa2VAConfig:
    from vesselctl.model.config import Sa2VAConfig

    sam2 = sam2_hiera_large_config()
    if name in _INTERNVL_PRESETS:
        text, template = _INTERNVL_PRESETS[name]
        # [SEG] is the first token Sa2VA appends to the InternVL vocabulary.
        return Sa2VAConfig(
            "internvl", _real_internvl(text), sam2, template, seg_token_id=INTERNVL_BASE_VOCAB
        )
    if name == "sa2va-qwen2.5-vl-3b":
        mllm = _qwen25vl_config(
            vision=dict(
                depth=32,
                hidden_size=1280,
                intermediate_size=3420,
                num_heads=16,
                out_hidden_size=2048,
                patch_size=14,
                spatial_merge_size=2,
                temporal_patch_size=2,
                window_size=112,
                fullatt_block_indexes=[7, 15, 23, 31],
            ),
            text=dict(
                vocab_size=QWEN_EMBED_ROWS,
                hidden_size=2048,
                intermediate_size=11008,
                num_hidden_layers=36,
                num_attention_heads=16,
                num_key_value_heads=2,
                max_position_embeddings=128000,
                rope_parameters={
                    "rope_type": "default",
                    "rope_theta": 1_000_000.0,
                    "mrope_section": [16, 24, 24],
                },
                tie_word_embeddings=True,
            ),
            token_ids=dict(
                image_token_id=QWEN_IMAGE_PAD_ID,
                video_token_id=151656,
                vision_start_token_id=151652,
                vision_end_token_id=151653,
            ),
        )
        # Qwen's padded embedding rows leave room: [SEG] gets the first id after the base vocab.
        return Sa2VAConfig("qwen2_5_vl", mllm, sam2, "qwen2_5_vl", seg_token_id=QWEN_BASE_VOCAB)
    raise ModelError(f"unknown preset '{name}'; expected one of {', '.join(PRESETS)}")


def _tiny_preset_config(name: str, tokenizer: PreTrainedTokenizerBase) -> Sa2VAConfig:
    from vesselctl.model.config import Sa2VAConfig
    from vesselctl.model.tokenizer import token_ids

    vocab = len(tokenizer)
    seg_id = token_ids(tokenizer, ["[SEG]"])["[SEG]"]
    sam2 = sam2_tiny_config(128)
    text = dict(
        vocab_size=vocab,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
    )
    if name == "tiny":
        image_id = token_ids(tokenizer, ["<IMG_CONTEXT>"])["<IMG_CONTEXT>"]
        mllm = _internvl_config(
            vision=dict(
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
                norm_type="layer_norm",
                layer_scale_init_value=0.1,
            ),
            text=text,
            image_token_id=image_id,
            image_size=56,
            patch_size=14,
        )
        return Sa2VAConfig("internvl", mllm, sam2, "qwen_chat", seg_token_id=seg_id)
    ids = token_ids(
        tokenizer, ["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"]
    )
    mllm = _qwen25vl_config(
        vision=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=text["hidden_size"],
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=56,
            fullatt_block_indexes=[1],
        ),
        text=dict(
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                # head_dim 64/4 = 16: the (t, h, w) sections must sum to head_dim / 2 = 8.
                "mrope_section": [2, 3, 3],
            },
            **text,
        ),
        token_ids=dict(
            image_token_id=ids["<|image_pad|>"],
            video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"],
            vision_end_token_id=ids["<|vision_end|>"],
        ),
    )
    return Sa2VAConfig("qwen2_5_vl", mllm, sam2, "qwen2_5_vl", seg_token_id=seg_id)


def preset_config(name: str, tokenizer: PreTrainedTokenizerBase | None = None) -> Sa2VAConfig:
    """The ``Sa2VAConfig`` of preset ``name``; tiny presets size their vocabulary to ``tokenizer``
    (the tiny offline tokenizer when None)."""
    if name not in PRESETS:
        raise ModelError(f"unknown preset '{name}'; expected one of {', '.join(PRESETS)}")
    if name.startswith("tiny"):
        if tokenizer is None:
            from vesselctl.model.tokenizer import build_tiny_tokenizer

            tokenizer = build_tiny_tokenizer()
        return _tiny_preset_config(name, tokenizer)
    return _real_preset_config(name)


def build_preset(
    name: str,
    tokenizer: PreTrainedTokenizerBase | None = None,
    dtype: Any = None,
    device: Any = None,
) -> tuple[Sa2VAModel, Sa2VAProcessor]:
    """Build preset ``name`` with random weights, and its processor.

    Tiny presets use the offline tiny tokenizer unless one is given; real sizes need the model's
    real tokenizer for a processor (random-weight benchmarks can pass any tokenizer whose special
    tokens match the config's ids).
    """
    import torch

    from vesselctl.model.processor import Sa2VAProcessor
    from vesselctl.model.sa2va import Sa2VAModel

    if tokenizer is None and name.startswith("tiny"):
        from vesselctl.model.tokenizer import build_tiny_tokenizer

        tokenizer = build_tiny_tokenizer()
    if tokenizer is None:
        raise ModelError(
            f"preset '{name}' needs a tokenizer for its processor: pass the released model's "
            "tokenizer (e.g. load_model with kind=official_hf or base)"
        )
    config = preset_config(name, tokenizer)
    with torch.device(device or "cpu"):
        model = Sa2VAModel(config)
    if dtype is not None:
        model = model.to(dtype=dtype)
    # The tiny Qwen2.5-VL keeps the image-token count small (the released budget is 512..2048
    # merged patches, far too many for a CPU test model).
    overrides = TINY_PROCESSOR_OVERRIDES.get(name, {})
    return model, Sa2VAProcessor(tokenizer, config, **overrides)
