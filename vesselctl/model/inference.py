"""Inference with a ``Sa2VAModel``: the single-pass probability path and the generate path.

``predict_probabilities``: one teacher-forced forward over prompt + "Sure, [SEG]." (the processor
appends the answer when ``train=False``), the [SEG] hidden states straight into SAM2, probabilities
at each sample's original size. No autoregressive decoding, whole batches at once.

``generate_masks``: greedy generation, then the last-layer hidden state of every generated [SEG]
(the step where [SEG] is the *input*, as the official ``predict_forward`` reads it), for free-text
prompts whose answer is not known in advance.

Both upsample SAM2's low-resolution logits bilinearly (align_corners=False) to SAM2's input size,
crop the letterbox padding when the processor used the aspect-preserving SAM2 input, and resize
to the original size before the sigmoid: for the official square input this is exactly the
official two-step upsampling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from vesselctl.errors import ModelError
from vesselctl.model.batch import Sa2VABatch
from vesselctl.model.tiling import Sam2Frame, sam2_logits_to_image

if TYPE_CHECKING:
    from vesselctl.model.sa2va import Sa2VAModel


@dataclass
class GeneratedMasks:
    """One sample's generate-mode result: generated token ids and one probability map per [SEG]."""

    token_ids: list[int]
    probabilities: torch.Tensor  # [n_seg, H, W] float32 in [0, 1]


def logits_to_probabilities(
    logits: torch.Tensor, frame: Sam2Frame | int, original_size: tuple[int, int]
) -> torch.Tensor:
    """SAM2 mask logits [n, h, w] -> probabilities [n, H, W] at ``original_size`` (H, W).

    ``frame`` is where the image sits in SAM2's input (``Sam2Frame``; an int S means the official
    square S x S resize). Bilinear up to S x S, letterbox padding cropped, bilinear to the
    original size (align_corners=False), then the sigmoid: the official order, so ``> 0.5``
    reproduces its masks.
    """
    if isinstance(frame, int):
        frame = Sam2Frame(frame, (frame, frame))
    return sam2_logits_to_image(logits, frame, tuple(original_size)).sigmoid()


def _original_sizes(batch: Sa2VABatch, sam2_size: int) -> list[tuple[int, int]]:
    if batch.original_sizes:
        if len(batch.original_sizes) != batch.batch_size:
            raise ModelError(
                f"batch has {batch.batch_size} samples but {len(batch.original_sizes)} "
                "original_sizes; expected one (height, width) per sample"
            )
        return [(int(h), int(w)) for h, w in batch.original_sizes]
    return [(sam2_size, sam2_size)] * batch.batch_size


@torch.no_grad()
def predict_probabilities(model: Sa2VAModel, batch: Sa2VABatch) -> list[torch.Tensor]:
    """Per sample, probabilities [n_seg_i, H_i, W_i] for each [SEG] of its (teacher-forced) answer.

    One forward of the MLLM (no LM head, no generation), SAM2 image features once per image,
    one batched mask-decoder call for every [SEG] of the batch.
    """
    return _probabilities(model, batch, model.mllm_hidden_states(batch))


def _probabilities(
    model: Sa2VAModel, batch: Sa2VABatch, hidden_states: torch.Tensor
) -> list[torch.Tensor]:
    """Per sample, the probabilities of its [SEG]s from the MLLM's last hidden states."""
    gathered, logits, _ = model.seg_logits(batch, hidden_states)
    sizes = _original_sizes(batch, model.config.sam2_image_size)
    frames = model.sam2_frames(batch)
    per_sample = torch.split(logits, gathered.counts, dim=0)
    return [
        logits_to_probabilities(lg, frame, size)
        for lg, frame, size in zip(per_sample, frames, sizes, strict=True)
    ]


@torch.no_grad()
def predict_with_seg_scores(
    model: Sa2VAModel, batch: Sa2VABatch
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``predict_probabilities`` plus, per [SEG], the probability the LLM gives [SEG] at its place.

    The single pass writes the answer "Sure, [SEG]." itself, so [SEG] is always there; this score
    says whether the model would have produced it: the LM head on the hidden state one position
    before each [SEG] (the one that predicts it), softmax, the [SEG] entry. Above 0.5 means greedy
    decoding would emit [SEG] at that point given the same prefix. One small LM-head call per
    [SEG], no [B, T, vocab] logits.
    """
    hidden_states = model.mllm_hidden_states(batch)
    probabilities = _probabilities(model, batch, hidden_states)
    seg_id = model.config.seg_token_id
    rows, cols = (batch.input_ids == seg_id).nonzero(as_tuple=True)
    previous = hidden_states[rows, (cols - 1).clamp(min=0)]
    token_logits = model.mllm.lm_head(previous).float()
    scores = token_logits.softmax(dim=-1)[:, seg_id]
    counts = torch.bincount(rows, minlength=batch.batch_size).tolist()
    return probabilities, list(torch.split(scores, counts, dim=0))


def _sample_mllm_inputs(model: Sa2VAModel, batch: Sa2VABatch, row: int) -> dict[str, Any]:
    """The MLLM inputs of sample ``row`` alone: its unpadded tokens and its own pixels."""
    length = int(batch.attention_mask[row].sum())
    ids = batch.input_ids[row : row + 1, :length]
    inputs: dict[str, Any] = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    image_id = model.config.image_token_id
    image_tokens = [int((batch.input_ids[r] == image_id).sum()) for r in range(batch.batch_size)]
    if model.config.family == "internvl":
        per_tile = model.config.image_tokens_per_tile
        tiles = [n // per_tile for n in image_tokens]
        start = sum(tiles[:row])
        inputs["pixel_values"] = batch.pixel_values[start : start + tiles[row]]
    else:
        if batch.image_grid_thw is None:
            raise ModelError("Qwen2.5-VL batch has no image_grid_thw; cannot split pixel_values")
        patches = [int(g.prod()) for g in batch.image_grid_thw]
        start = sum(patches[:row])
        inputs["pixel_values"] = batch.pixel_values[start : start + patches[row]]
        inputs["image_grid_thw"] = batch.image_grid_thw[row : row + 1]
        if model._mllm_takes_mm_token_types():
            inputs["mm_token_type_ids"] = model._mm_token_type_ids(batch)[row : row + 1, :length]
    inputs["pixel_values"] = inputs["pixel_values"].to(model.mllm.dtype)
    return inputs


@torch.no_grad()
def generate_masks(
    model: Sa2VAModel,
    batch: Sa2VABatch,
    max_new_tokens: int = 512,
    **generate_kwargs: Any,
) -> list[GeneratedMasks]:
    """Greedy generation per sample, then SAM2 on each generated [SEG]'s hidden state.

    ``batch`` holds prompts only (ending with the assistant header, no answer). Samples run one
    at a time, like the official ``predict_forward``; a [SEG] emitted as the very last token has
    no hidden state yet and yields no mask (as officially). Extra ``generate_kwargs`` (e.g. a
    ``logits_processor``) go to ``mllm.generate``.
    """
    results: list[GeneratedMasks] = []
    sizes = _original_sizes(batch, model.config.sam2_image_size)
    frames = model.sam2_frames(batch)
    text_cfg = model.config.text_config
    eos = generate_kwargs.pop("eos_token_id", text_cfg.eos_token_id)
    pad = generate_kwargs.pop("pad_token_id", text_cfg.pad_token_id)
    for row in range(batch.batch_size):
        inputs = _sample_mllm_inputs(model, batch, row)
        prompt_length = inputs["input_ids"].shape[1]
        out = model.mllm.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            output_hidden_states=True,
            return_dict_in_generate=True,
            eos_token_id=eos,
            pad_token_id=pad,
            **generate_kwargs,
        )
        generated = out.sequences[0, prompt_length:]
        # hidden_states[k][-1] is the last layer at step k; for k >= 1 its single position is
        # the one whose input is generated[k - 1].
        seg_states = [
            out.hidden_states[k + 1][-1][0, -1]
            for k in range(len(generated) - 1)
            if int(generated[k]) == model.seg_token_id
        ]
        if seg_states:
            prompts = model.text_hidden_fcs(torch.stack(seg_states))
            embeddings = model.sam2_image_embeddings(batch.sam2_pixel_values[row : row + 1])
            index = torch.zeros(len(seg_states), dtype=torch.long, device=prompts.device)
            logits, _ = model.decode_masks(embeddings, prompts, index)
        else:
            logits = torch.zeros(0, 1, 1, device=batch.input_ids.device)
        probabilities = logits_to_probabilities(logits, frames[row], sizes[row])
        results.append(GeneratedMasks(generated.tolist(), probabilities))
    return results
