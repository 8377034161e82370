"""``Sa2VAModel``: Sa2VA composed from transformers' native parts, with no remote code.

``mllm`` (``InternVLForConditionalGeneration`` or ``Qwen2_5_VLForConditionalGeneration``) reads the
image and the conversation; the last-layer hidden state at each ``[SEG]`` token goes through
``text_hidden_fcs`` (H -> H -> 256) and prompts ``sam2`` (``Sam2Model``) as a third sparse token
next to the prompt encoder's two "no point" tokens; SAM2 decodes three masks and the one with
the best predicted IoU is kept (256 x 256 logits for a 1024 input).

Which hidden state: the one at the ``[SEG]`` position itself. Evidence, bytedance/Sa2VA
(projects/sa2va): training takes ``hidden_states[-1][input_ids == seg_token_idx]``
(models/sa2va.py, ``forward``), with the [SEG] teacher-forced in the answer; inference
(hf/models/modeling_sa2va_chat.py, ``predict_forward``) concatenates the per-step last-layer
hidden states of ``generate`` and keeps those whose *input* token (``sequences[0][:-1]``) is
[SEG] -- again the position where [SEG] is fed, not the one that predicts it. So a
teacher-forced forward over "... Sure, [SEG]." yields the [SEG] hidden state of generation,
which is what ``predict_probabilities`` relies on (tested in tests/model/test_inference.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, Sam2Model

from vesselctl.errors import ModelError
from vesselctl.model.batch import Sa2VABatch, Sa2VAOutput
from vesselctl.model.config import Sa2VAConfig
from vesselctl.model.losses import PointSampledLosses, llm_cross_entropy, mask_losses
from vesselctl.model.tiling import Sam2Frame, masks_to_sam2_frame


@dataclass
class SegGather:
    """The [SEG] hidden states of a batch, in sample order then token order."""

    hidden: torch.Tensor  # [N, H]
    counts: list[int]  # [SEG]s per sample, len B
    image_index: torch.Tensor  # [N] long: which sample (image) each [SEG] belongs to


def gather_seg_hidden_states(
    hidden_states: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    seg_token_id: int,
    positions: torch.Tensor | None = None,
    counts: list[int] | None = None,
) -> SegGather:
    """Pick the hidden state at every [SEG] token of real (non-padding) positions.

    Rows follow sample order, then position order, so ``counts`` splits them per sample.
    ``positions`` ([N, 2] row, position) and ``counts`` found beforehand on the CPU
    (``Sa2VABatch.seg_positions``) avoid the GPU synchronisation of finding them here.
    """
    if positions is not None and counts is not None:
        positions = positions.to(hidden_states.device)
        rows, cols = positions[:, 0], positions[:, 1]
        return SegGather(hidden=hidden_states[rows, cols], counts=list(counts), image_index=rows)
    seg_mask = input_ids == seg_token_id
    if attention_mask is not None:
        seg_mask = seg_mask & attention_mask.bool()
    counts_t = seg_mask.sum(dim=1)
    image_index = torch.repeat_interleave(
        torch.arange(input_ids.shape[0], device=input_ids.device), counts_t
    )
    return SegGather(
        hidden=hidden_states[seg_mask], counts=counts_t.tolist(), image_index=image_index
    )


class Sa2VAModel(PreTrainedModel):
    """Sa2VA = native MLLM + native SAM2 + ``text_hidden_fcs``; see the module docstring."""

    config_class = Sa2VAConfig
    base_model_prefix = "sa2va"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True

    def __init__(self, config: Sa2VAConfig) -> None:
        super().__init__(config)
        attn = getattr(config, "_attn_implementation", None)
        if attn is not None:
            config.mllm_config._attn_implementation = attn
            # SAM2's mask decoder follows its own config; keep it on SDPA/eager, never flash.
            config.sam2_config._attn_implementation = "eager" if attn == "eager" else "sdpa"
        if config.family == "internvl":
            from transformers import InternVLForConditionalGeneration

            self.mllm = InternVLForConditionalGeneration(config.mllm_config)
        else:
            from transformers import Qwen2_5_VLForConditionalGeneration

            self.mllm = Qwen2_5_VLForConditionalGeneration(config.mllm_config)
        self.sam2 = Sam2Model(config.sam2_config)
        hidden = config.llm_hidden_size
        self.text_hidden_fcs = nn.Sequential(
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, config.text_projection_dim),
            nn.Dropout(0.0),
        )
        # No parameters: the deterministic part of the mask losses, a module so that
        # model.compile can make it a compiled region.
        self.point_losses = PointSampledLosses()
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """Initialise only ``text_hidden_fcs``; the native parts initialise themselves."""
        if any(module is m for m in self.text_hidden_fcs.modules()) and isinstance(
            module, nn.Linear
        ):
            module.weight.data.normal_(mean=0.0, std=0.02)
            if module.bias is not None:
                module.bias.data.zero_()

    # --- switches ------------------------------------------------------------------------

    def set_llm_gradient_checkpointing(self, enabled: bool) -> None:
        """Gradient checkpointing on the LLM layers only, as the official recipe does.

        transformers >= 5.2x names it "activation checkpointing" (the old name warns); 5.17 may
        only have the old name, so use whichever exists.
        """
        language_model = self.mllm.model.language_model
        if enabled:
            if hasattr(language_model, "activation_checkpointing_enable"):
                language_model.activation_checkpointing_enable(
                    activation_checkpointing_kwargs={"use_reentrant": False}
                )
            else:
                language_model.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs={"use_reentrant": False}
                )
        elif hasattr(language_model, "activation_checkpointing_disable"):
            language_model.activation_checkpointing_disable()
        else:
            language_model.gradient_checkpointing_disable()

    def enable_input_require_grads(self) -> None:
        """Make the LLM's input embeddings output require grad, and nothing else.

        peft calls this on the whole model when gradient checkpointing is on. transformers'
        default hooks the input layer of every sub-model, the frozen InternViT and SAM2 Hiera
        encoders included: autograd then keeps all their activations (about 31 GiB more peak
        memory at micro-batch 8 with Sa2VA-1B, measured) and backpropagates through them for
        nothing, since their weights do not train and nothing before them does.
        """
        self.mllm.model.language_model.enable_input_require_grads()

    def disable_input_require_grads(self) -> None:
        """Undo ``enable_input_require_grads``."""
        self.mllm.model.language_model.disable_input_require_grads()

    @property
    def is_gradient_checkpointing(self) -> bool:
        """Whether checkpointing is on (only ever on the LLM). peft reads this name when it
        wraps the model; transformers >= 5.2x deprecates it with a warning on every read."""
        return self.llm_gradient_checkpointing

    @property
    def llm_gradient_checkpointing(self) -> bool:
        """Whether the LLM layers recompute activations in backward."""
        return any(
            getattr(m, "gradient_checkpointing", False)
            for m in self.mllm.model.language_model.modules()
        )

    @property
    def seg_token_id(self) -> int:
        return int(self.config.seg_token_id)

    # --- the MLLM side -------------------------------------------------------------------

    def mllm_hidden_states(self, batch: Sa2VABatch) -> torch.Tensor:
        """Last-layer (final-norm) hidden states of the LLM over the batch, [B, T, H].

        Calls the MLLM's base model (``mllm.model``) so no [B, T, vocab] logits are built;
        the LM head is applied later only where a loss needs it.
        """
        kwargs: dict = {
            "input_ids": batch.input_ids,
            "attention_mask": batch.attention_mask,
            "pixel_values": batch.pixel_values,
            "use_cache": False,
        }
        if self.config.family == "qwen2_5_vl":
            if batch.image_grid_thw is None:
                raise ModelError(
                    "Qwen2.5-VL batch has no image_grid_thw; the processor must provide it "
                    "with pixel_values"
                )
            kwargs["image_grid_thw"] = batch.image_grid_thw
            if self._mllm_takes_mm_token_types():
                kwargs["mm_token_type_ids"] = self._mm_token_type_ids(batch)
        dtype = self.mllm.dtype
        if kwargs["pixel_values"] is not None and kwargs["pixel_values"].is_floating_point():
            kwargs["pixel_values"] = kwargs["pixel_values"].to(dtype)
        from vesselctl.model.acceleration import run_with_compile_fallback

        if self.config.family == "internvl" and batch.image_positions is not None:

            def forward() -> torch.Tensor:
                return self._internvl_hidden_states(batch, kwargs["pixel_values"])
        else:

            def forward() -> torch.Tensor:
                return self.mllm.model(**kwargs).last_hidden_state

        cache = self.__dict__.get("encoder_cache")
        if cache is not None and batch.vision_keys is not None:
            with self._cached_vision_tower(cache, batch.vision_keys):
                return run_with_compile_fallback(self, forward)
        return run_with_compile_fallback(self, forward)

    def _internvl_hidden_states(
        self, batch: Sa2VABatch, pixel_values: torch.Tensor
    ) -> torch.Tensor:
        """InternVL's forward (embeddings, image features at the image tokens, the LLM) with
        the features put at ``batch.image_positions``, found by the processor on the CPU.

        Written here instead of calling ``InternVLModel.forward`` because its masked_scatter
        (forward and backward) and its token-count check each make the CPU wait for the GPU
        mid-step; after such a wait the GPU idles while the CPU launches what follows (the
        clip and optimiser launches; 106.8 -> 104.2 ms per 4B step in BENCHMARKS.md, issue 10).
        Same values: the image features fill the image tokens in row-major order, as
        masked_scatter does (tested against it).
        """
        model = self.mllm.model
        mllm_config = self.config.mllm_config
        embeds = model.get_input_embeddings()(batch.input_ids)
        features = model.get_image_features(
            pixel_values=pixel_values,
            vision_feature_layer=getattr(mllm_config, "vision_feature_layer", -1),
            vision_feature_select_strategy=getattr(
                mllm_config, "vision_feature_select_strategy", "default"
            ),
        )
        if not isinstance(features, torch.Tensor):  # transformers >= 5.2x returns an output
            features = features.pooler_output
        features = features.reshape(-1, embeds.shape[-1]).to(embeds.dtype)
        positions = batch.image_positions.to(embeds.device, non_blocking=True)
        if positions.shape[0] != features.shape[0]:
            raise ModelError(
                f"batch has {positions.shape[0]} image tokens but the vision tower gave "
                f"{features.shape[0]} image features; the processor's max_tiles / image size "
                "must match the model's (rebuild the batch with the model's processor)"
            )
        embeds = embeds.index_put((positions[:, 0], positions[:, 1]), features)
        outputs = model.language_model(
            inputs_embeds=embeds, attention_mask=batch.attention_mask, use_cache=False
        )
        return outputs.last_hidden_state

    @contextlib.contextmanager
    def _cached_vision_tower(self, cache: Any, keys: list[str]) -> Iterator[None]:
        """Serve the frozen vision tower's last hidden state from ``cache`` inside the block.

        The MLLM calls its vision tower and reads ``last_hidden_state`` (vision_feature_layer
        -1, as every released InternVL-based Sa2VA); the trainable projector still runs.
        """
        from transformers.modeling_outputs import BaseModelOutput

        layer = getattr(self.config.mllm_config, "vision_feature_layer", -1)
        if self.config.family != "internvl" or layer != -1:
            raise ModelError(
                "the encoder cache serves the InternVL vision tower's last layer only; found "
                f"family {self.config.family}, vision_feature_layer {layer}"
            )
        tower = self.mllm.model.vision_tower
        original = tower.forward

        def cached_forward(pixel_values: torch.Tensor, **kwargs: Any) -> BaseModelOutput:
            def compute(x: torch.Tensor) -> torch.Tensor:
                return original(pixel_values=x, **kwargs).last_hidden_state

            return BaseModelOutput(last_hidden_state=cache.vision(keys, pixel_values, compute))

        tower.forward = cached_forward
        try:
            yield
        finally:
            del tower.forward

    def _mllm_takes_mm_token_types(self) -> bool:
        """transformers >= 5.2x builds Qwen2.5-VL's 3D (mrope) positions only when given
        ``mm_token_type_ids``; without them it silently falls back to 1D positions."""
        cached = self.__dict__.get("_takes_mm_token_types")
        if cached is None:
            import inspect

            cached = "mm_token_type_ids" in inspect.signature(self.mllm.model.forward).parameters
            self.__dict__["_takes_mm_token_types"] = cached
        return cached

    def _mm_token_type_ids(self, batch: Sa2VABatch) -> torch.Tensor:
        """The batch's token types (1 = image token), or built from the image token id."""
        given = getattr(batch, "mm_token_type_ids", None)
        if given is not None:
            return given
        return (batch.input_ids == self.config.image_token_id).long()

    # --- the SAM2 side -------------------------------------------------------------------

    def sam2_image_embeddings(
        self, sam2_pixel_values: torch.Tensor, keys: list[str] | None = None
    ) -> list[torch.Tensor]:
        """SAM2 feature maps per image, high resolution first: [B, C_i, h_i, w_i] each.

        The frozen image encoder's FPN maps (from the encoder cache when one is enabled and
        ``keys`` are given), then the mask decoder's ``conv_s0`` / ``conv_s1`` on the two
        high-resolution maps (as ``Sam2Model.get_image_features`` does; they train with the
        decoder), and ``no_memory_embedding`` added to the lowest-resolution map (a single frame
        has no memory), as the official image path does.
        """
        pixel_values = sam2_pixel_values.to(self.sam2.dtype)

        def encode(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return tuple(self.sam2.vision_encoder(x, return_dict=True).fpn_hidden_states)

        from vesselctl.model.acceleration import run_with_compile_fallback

        cache = self.__dict__.get("encoder_cache")
        if cache is not None and keys is not None:
            maps = list(
                run_with_compile_fallback(self, lambda: cache.sam2(keys, pixel_values, encode))
            )
        else:
            maps = list(run_with_compile_fallback(self, lambda: encode(pixel_values)))
        maps[0] = self.sam2.mask_decoder.conv_s0(maps[0])
        maps[1] = self.sam2.mask_decoder.conv_s1(maps[1])
        maps[-1] = maps[-1] + self.sam2.no_memory_embedding.reshape(1, -1, 1, 1)
        return maps

    def decode_masks(
        self,
        image_embeddings: list[torch.Tensor],
        prompt_embeddings: torch.Tensor,
        image_index: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode one mask per prompt, all prompts of the batch in one decoder call.

        ``prompt_embeddings`` [N, 256] are projected [SEG] states; ``image_index`` [N] says
        which image each belongs to, so each image's features (computed once) are shared by
        all its [SEG]s. Returns logits [N, h, w] of the best-IoU multimask output and its
        predicted IoU [N].
        """
        n = prompt_embeddings.shape[0]
        if n == 1 and getattr(self.sam2.mask_decoder.transformer, "_compiled_call_impl", None):
            # A compiled decoder is specialised for one prompt when it sees one, and that
            # specialisation gave wrong input gradients with torch 2.13's CPU inductor (3x off
            # in SAM2's neck; two or more prompts were right). Decode a copy beside it and keep
            # the first: the same values, and gradients through the first copy only.
            logits, iou = self.decode_masks(
                image_embeddings, prompt_embeddings.expand(2, -1), image_index.expand(2)
            )
            return logits[:1], iou[:1]
        dtype = image_embeddings[-1].dtype
        device = image_embeddings[-1].device
        low_res = image_embeddings[-1].index_select(0, image_index)
        high_res = [f.index_select(0, image_index) for f in image_embeddings[:-1]]
        # One empty point (label -1); the prompt encoder pads it with a second "not a point"
        # token because no box is given -> 2 sparse tokens, as Sa2VA's SAM2 call produces.
        points = torch.zeros(n, 1, 1, 2, dtype=dtype, device=device)
        labels = -torch.ones(n, 1, 1, dtype=torch.int32, device=device)
        sparse, dense = self.sam2.prompt_encoder(
            input_points=points, input_labels=labels, input_boxes=None, input_masks=None
        )
        sparse = torch.cat([sparse, prompt_embeddings.to(sparse.dtype)[:, None, None, :]], dim=2)
        positional = self.sam2.get_image_wide_positional_embeddings().to(dtype)
        positional = positional.expand(n, -1, -1, -1)
        from vesselctl.model.acceleration import run_with_compile_fallback

        # Through the compile fallback: the decoder's transformer may be a compiled region.
        masks, iou, _, _ = run_with_compile_fallback(
            self,
            lambda: self.sam2.mask_decoder(
                image_embeddings=low_res,
                image_positional_embeddings=positional,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense.to(dtype),
                multimask_output=True,
                high_resolution_features=high_res,
            ),
        )
        masks = masks[:, 0]  # [N, 3, h, w]
        iou = iou[:, 0]  # [N, 3]
        best = iou.argmax(dim=-1)  # [N]
        rows = torch.arange(n, device=device)
        return masks[rows, best], iou[rows, best]

    def _gather_seg(self, batch: Sa2VABatch, hidden_states: torch.Tensor) -> SegGather:
        """The batch's [SEG] hidden states, at the positions the processor found if it did."""
        return gather_seg_hidden_states(
            hidden_states,
            batch.input_ids,
            batch.attention_mask,
            self.seg_token_id,
            batch.seg_positions,
            batch.seg_counts,
        )

    def seg_logits(
        self, batch: Sa2VABatch, hidden_states: torch.Tensor
    ) -> tuple[SegGather, torch.Tensor, torch.Tensor]:
        """[SEG] hidden states -> SAM2 logits [N, h, w] and IoU [N] for the whole batch."""
        gathered = self._gather_seg(batch, hidden_states)
        image_embeddings = self.sam2_image_embeddings(batch.sam2_pixel_values, batch.sam2_keys)
        prompts = self.text_hidden_fcs(gathered.hidden)
        logits, iou = self.decode_masks(image_embeddings, prompts, gathered.image_index)
        return gathered, logits, iou

    # --- inference (implemented in model/inference.py) ----------------------------------

    def predict_probabilities(self, batch: Sa2VABatch) -> list[torch.Tensor]:
        """Single teacher-forced pass -> per-sample probabilities [n_seg_i, H_i, W_i]."""
        from vesselctl.model.inference import predict_probabilities

        return predict_probabilities(self, batch)

    def generate_masks(self, batch: Sa2VABatch, max_new_tokens: int = 512, **kwargs: Any) -> list:
        """Greedy generation then SAM2 on generated [SEG]s (official ``predict_forward``)."""
        from vesselctl.model.inference import generate_masks

        return generate_masks(self, batch, max_new_tokens=max_new_tokens, **kwargs)

    # --- training forward ----------------------------------------------------------------

    def forward(self, batch: Sa2VABatch) -> Sa2VAOutput:  # type: ignore[override]
        """Teacher-forced forward: weighted losses (when labels/masks are given) and mask logits.

        Every call runs the same modules whatever the batch holds: a batch without any [SEG]
        still decodes one dummy prompt and adds 0 x its output, so all ranks of a distributed
        run reduce the same gradients (ZeRO / DDP hang otherwise).
        """
        cfg = self.config
        self.check_targets(batch)
        hidden_states = self.mllm_hidden_states(batch)
        gathered = self._gather_seg(batch, hidden_states)
        image_embeddings = self.sam2_image_embeddings(batch.sam2_pixel_values, batch.sam2_keys)
        n_seg = int(gathered.hidden.shape[0])
        if n_seg > 0:
            prompts = self.text_hidden_fcs(gathered.hidden)
            logits, iou = self.decode_masks(image_embeddings, prompts, gathered.image_index)
        else:
            # Dummy prompt from the first token of sample 0, through the same layers.
            dummy = self.text_hidden_fcs(hidden_states[:1, 0])
            zero_index = torch.zeros(1, dtype=torch.long, device=hidden_states.device)
            dummy_logits, dummy_iou = self.decode_masks(image_embeddings, dummy, zero_index)
            logits = dummy_logits[:0]
            iou = dummy_iou[:0]
            # Logits only (not IoU): the same parameters get gradients as on a normal batch.
            graph_anchor = dummy_logits.sum() * 0.0

        mask_logits = list(torch.split(logits, gathered.counts, dim=0))
        iou_scores = list(torch.split(iou, gathered.counts, dim=0))

        loss_mask = loss_dice = llm_loss = None
        wants_loss = batch.gt_masks is not None or batch.labels is not None
        if batch.gt_masks is not None and n_seg > 0:
            from vesselctl.model.acceleration import run_with_compile_fallback

            def point_losses(*args: Any) -> tuple[torch.Tensor, torch.Tensor]:
                # A compiled region like the others: its compile failure goes eager here. The
                # random points are drawn before, once, so a retry uses the same points.
                return run_with_compile_fallback(self, lambda: self.point_losses(*args))

            targets = self._aligned_targets(batch.gt_masks, self.sam2_frames(batch), logits)
            parts = mask_losses(
                logits,
                targets,
                bce_weight=cfg.loss_bce_weight,
                dice_weight=cfg.loss_dice_weight,
                num_points=cfg.num_points,
                oversample_ratio=cfg.oversample_ratio,
                importance_sample_ratio=cfg.importance_sample_ratio,
                point_losses=point_losses,
            )
            loss_mask, loss_dice = parts.loss_mask, parts.loss_dice
        elif wants_loss and n_seg == 0:
            # No [SEG] anywhere: zero mask losses that still touch SAM2 and text_hidden_fcs.
            loss_mask = graph_anchor
            loss_dice = graph_anchor * 0.0
        if batch.labels is not None:
            llm_loss = llm_cross_entropy(
                hidden_states, batch.labels, self.mllm.lm_head, batch.supervised_positions
            )
            llm_loss = llm_loss * cfg.loss_llm_weight
        present = [p for p in (loss_mask, loss_dice, llm_loss) if p is not None]
        loss = torch.stack([p.float() for p in present]).sum() if present else None
        return Sa2VAOutput(
            loss=loss,
            loss_mask=loss_mask,
            loss_dice=loss_dice,
            llm_loss=llm_loss,
            mask_logits=mask_logits,
            iou_scores=iou_scores,
        )

    def check_targets(self, batch: Sa2VABatch) -> None:
        """One ground-truth mask per [SEG] of each sample; checked before any compute."""
        if batch.gt_masks is None:
            return
        counts = batch.seg_counts
        if counts is None:
            seg = (batch.input_ids == self.seg_token_id) & batch.attention_mask.bool()
            counts = seg.sum(dim=1).tolist()
        if len(batch.gt_masks) != len(counts):
            raise ModelError(
                f"batch has {len(counts)} samples but gt_masks holds {len(batch.gt_masks)} "
                "entries; expected one [n_seg, H, W] tensor per sample"
            )
        for i, (masks, count) in enumerate(zip(batch.gt_masks, counts, strict=True)):
            if masks.shape[0] != count:
                sample = batch.sample_ids[i] if i < len(batch.sample_ids) else f"#{i}"
                raise ModelError(
                    f"sample {sample}: {count} [SEG] token(s) in input_ids but {masks.shape[0]} "
                    "ground-truth mask(s); each [SEG] needs exactly one mask (was the prompt "
                    "truncated?)"
                )

    def sam2_frames(self, batch: Sa2VABatch) -> list[Sam2Frame]:
        """Where each image sits in SAM2's input: the batch's frames (letterbox or square), or
        the official square frame when the batch records none."""
        if batch.sam2_frames:
            if len(batch.sam2_frames) != batch.batch_size:
                raise ModelError(
                    f"batch has {batch.batch_size} samples but {len(batch.sam2_frames)} "
                    "sam2_frames; expected one per sample (or none for the square resize)"
                )
            return list(batch.sam2_frames)
        size = self.config.sam2_image_size
        return [Sam2Frame(size, (size, size))] * batch.batch_size

    @staticmethod
    def _aligned_targets(
        gt_masks: list[torch.Tensor], frames: list[Sam2Frame], logits: torch.Tensor
    ) -> torch.Tensor:
        """Stack the ground-truth masks in [SEG] order (checked by ``check_targets``).

        Each sample's masks are brought into the frame of SAM2's logits (nearest): a plain
        resize for the official square input, into the content region for a letterbox input.
        Masks of different samples may have different sizes; after this they stack.
        """
        side = logits.shape[-1]
        stacked = [
            masks_to_sam2_frame(m.float(), frame, side)
            for m, frame in zip(gt_masks, frames, strict=True)
            if m.shape[0]
        ]
        return torch.cat(stacked, dim=0).to(logits.device)
