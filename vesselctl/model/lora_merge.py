"""LoRA merge math for official (xtuner) and vesselctl (peft) training checkpoints.

``W' = W + s * B @ A`` with ``s = alpha / r`` (rsLoRA: ``alpha / sqrt(r)``), computed in fp32 and
cast back once, so a bf16 model is rounded a single time. The checkpoint file holds only A and B;
``r`` is their inner dimension and ``alpha`` comes from the training config (mmengine keeps it in
``meta['cfg']``; vesselctl in ``trainable.json``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from vesselctl.errors import CheckpointError


@dataclass(frozen=True)
class LoraSpec:
    """How LoRA factors scale: rank ``r``, ``alpha`` and whether rsLoRA was used."""

    r: int
    alpha: float
    rslora: bool = False

    @property
    def scale(self) -> float:
        """The factor applied to ``B @ A`` (peft's ``scaling``)."""
        return self.alpha / (math.sqrt(self.r) if self.rslora else self.r)


def merge_lora(
    weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float, name: str = ""
) -> torch.Tensor:
    """Return ``weight + scale * lora_b @ lora_a`` in ``weight``'s dtype (math in fp32)."""
    out_features, in_features = weight.shape
    if lora_a.ndim != 2 or lora_b.ndim != 2 or lora_a.shape[0] != lora_b.shape[1]:
        raise CheckpointError(
            f"{name}: LoRA factors do not fit together: lora_A {tuple(lora_a.shape)}, "
            f"lora_B {tuple(lora_b.shape)}; expected [r, in] and [out, r]"
        )
    if lora_a.shape[1] != in_features or lora_b.shape[0] != out_features:
        raise CheckpointError(
            f"{name}: LoRA factors lora_A {tuple(lora_a.shape)} / lora_B {tuple(lora_b.shape)} "
            f"do not fit the base weight {tuple(weight.shape)}; the checkpoint was trained on a "
            "different base model"
        )
    merged = weight.to(torch.float32) + scale * (
        lora_b.to(torch.float32) @ lora_a.to(torch.float32)
    )
    return merged.to(weight.dtype)


def lora_spec_from_mmengine_cfg(cfg_text: str, rank: int) -> LoraSpec | None:
    """Read ``lora_alpha`` / ``use_rslora`` of the LLM LoRA from mmengine's pretty-printed config
    (``meta['cfg']`` of an official checkpoint). ``rank`` comes from the factors' shapes and is
    checked against the config's ``r``. None when the text has no ``llm_lora`` block."""
    start = cfg_text.find("llm_lora")
    if start < 0:
        return None
    block = _balanced_block(cfg_text, cfg_text.find("(", start))
    alpha = re.search(r"\blora_alpha\s*=\s*([0-9.]+)", block)
    r_match = re.search(r"\br\s*=\s*(\d+)", block)
    if alpha is None:
        return None
    if r_match is not None and int(r_match.group(1)) != rank:
        raise CheckpointError(
            f"the training config says LoRA r={r_match.group(1)} but the checkpoint's LoRA "
            f"factors have rank {rank}; the config and the weights belong to different runs"
        )
    rslora = re.search(r"\buse_rslora\s*=\s*True", block) is not None
    return LoraSpec(r=rank, alpha=float(alpha.group(1)), rslora=rslora)


def _balanced_block(text: str, open_index: int) -> str:
    """Text from ``open_index`` (a '(') to its matching ')'; the rest of the text if unbalanced."""
    if open_index < 0:
        return ""
    depth = 0
    for pos in range(open_index, len(text)):
        if text[pos] == "(":
            depth += 1
        elif text[pos] == ")":
            depth -= 1
            if depth == 0:
                return text[open_index : pos + 1]
    return text[open_index:]
