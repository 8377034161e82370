"""``Sa2VAConfig``: one transformers config holding the MLLM and SAM2 sub-configs plus Sa2VA's own
options (template, [SEG] token, loss weights, point sampling).

The sub-configs are transformers' native ``InternVLConfig`` / ``Qwen2_5_VLConfig`` and
``Sam2Config`` objects, so ``Sa2VAModel`` composes native model classes and ``config.json``
round-trips through ``save_pretrained`` / ``from_pretrained`` without remote code.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PretrainedConfig, Sam2Config

FAMILIES = ("internvl", "qwen2_5_vl")
TEMPLATES = ("qwen_chat", "phi3_chat", "qwen2_5_vl")
MLLM_MODEL_TYPES = {"internvl": "internvl", "qwen2_5_vl": "qwen2_5_vl"}


def _as_config(value: Any, model_type: str, field_name: str) -> PretrainedConfig:
    """Turn a sub-config given as a dict (read from config.json) into its config object.

    transformers 5.x needs nested sub-configs as objects, not dicts (see sa2va.md).
    """
    if isinstance(value, PretrainedConfig):
        return value
    if isinstance(value, dict):
        data = dict(value)
        found_type = data.pop("model_type", model_type)
        if found_type != model_type:
            raise ValueError(
                f"Sa2VAConfig.{field_name}: model_type is '{found_type}', expected '{model_type}'"
            )
        return AutoConfig.for_model(model_type, **data)
    raise ValueError(
        f"Sa2VAConfig.{field_name}: expected a config object or a dict, "
        f"found {type(value).__name__}"
    )


class Sa2VAConfig(PretrainedConfig):
    """Configuration of a Sa2VA model: an MLLM, SAM2, and the [SEG] -> SAM2 bridge.

    Loss weights are applied inside the model so that the logged parts sum to the total loss;
    point-sampling values follow Mask2Former / Sa2VA (12544 points, oversample 3, importance 0.75).
    """

    model_type = "vesselctl_sa2va"

    def __init__(
        self,
        family: str = "internvl",
        mllm_config: PretrainedConfig | dict | None = None,
        sam2_config: PretrainedConfig | dict | None = None,
        template: str = "qwen_chat",
        seg_token: str = "[SEG]",
        seg_token_id: int = 0,
        loss_bce_weight: float = 2.0,
        loss_dice_weight: float = 0.5,
        loss_llm_weight: float = 1.0,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        text_projection_dim: int = 256,
        **kwargs: Any,
    ) -> None:
        if family not in FAMILIES:
            raise ValueError(f"Sa2VAConfig.family is '{family}'; expected one of {FAMILIES}")
        if template not in TEMPLATES:
            raise ValueError(f"Sa2VAConfig.template is '{template}'; expected one of {TEMPLATES}")
        self.family = family
        model_type = MLLM_MODEL_TYPES[family]
        self.mllm_config = _as_config(
            mllm_config if mllm_config is not None else {}, model_type, "mllm_config"
        )
        self.sam2_config = _as_config(
            sam2_config if sam2_config is not None else Sam2Config(), "sam2", "sam2_config"
        )
        self.template = template
        self.seg_token = seg_token
        self.seg_token_id = int(seg_token_id)
        self.loss_bce_weight = float(loss_bce_weight)
        self.loss_dice_weight = float(loss_dice_weight)
        self.loss_llm_weight = float(loss_llm_weight)
        self.num_points = int(num_points)
        self.oversample_ratio = float(oversample_ratio)
        self.importance_sample_ratio = float(importance_sample_ratio)
        self.text_projection_dim = int(text_projection_dim)
        fpn = self.sam2_config.vision_config.fpn_hidden_size
        if self.text_projection_dim != fpn:
            raise ValueError(
                f"Sa2VAConfig.text_projection_dim is {self.text_projection_dim} but SAM2's prompt "
                f"width (fpn_hidden_size) is {fpn}; they must be equal"
            )
        if not 0.0 <= self.importance_sample_ratio <= 1.0:
            raise ValueError(
                "Sa2VAConfig.importance_sample_ratio must lie in [0, 1], "
                f"found {self.importance_sample_ratio}"
            )
        if self.oversample_ratio < 1.0:
            raise ValueError(
                f"Sa2VAConfig.oversample_ratio must be >= 1, found {self.oversample_ratio}"
            )
        super().__init__(**kwargs)

    # --- derived values the processor and model read instead of hard-coding 448 / 1024 -------

    @property
    def text_config(self) -> PretrainedConfig:
        """The LLM's config (hidden size, vocabulary)."""
        return self.mllm_config.text_config

    @property
    def llm_hidden_size(self) -> int:
        return int(self.mllm_config.text_config.hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.mllm_config.text_config.vocab_size)

    @property
    def image_token_id(self) -> int:
        """Token id of the image placeholder (``<IMG_CONTEXT>`` / ``<|image_pad|>``)."""
        return int(self.mllm_config.image_token_id)

    @property
    def sam2_image_size(self) -> int:
        """Side of SAM2's square input (1024 for the released SAM2)."""
        size = self.sam2_config.prompt_encoder_config.image_size
        return int(size[0] if isinstance(size, list | tuple) else size)

    @property
    def mask_logits_size(self) -> int:
        """Side of SAM2's low-resolution mask logits: 4x the image-embedding grid (256 at 1024)."""
        pe = self.sam2_config.prompt_encoder_config
        patch = pe.patch_size[0] if isinstance(pe.patch_size, list | tuple) else pe.patch_size
        return 4 * self.sam2_image_size // int(patch)

    @property
    def tile_size(self) -> int:
        """InternVL tile side (448 for released models); Qwen2.5-VL has no tiles (patch * merge)."""
        if self.family == "internvl":
            size = self.mllm_config.vision_config.image_size
            return int(size[0] if isinstance(size, list | tuple) else size)
        vision = self.mllm_config.vision_config
        return int(vision.patch_size * vision.spatial_merge_size)

    @property
    def image_tokens_per_tile(self) -> int:
        """InternVL: ``<IMG_CONTEXT>`` tokens per tile after pixel shuffle (256 at 448/14/0.5)."""
        if self.family != "internvl":
            raise ValueError("image_tokens_per_tile applies to the InternVL family only")
        vision = self.mllm_config.vision_config
        patch = vision.patch_size
        patch = patch[0] if isinstance(patch, list | tuple) else patch
        side = self.tile_size // int(patch)
        return int((side * self.mllm_config.downsample_ratio) ** 2)
