"""What trains: peft LoRA on the LLM plus named groups, everything else frozen.

Follows the official Sa2VA fine-tune recipe by default: LoRA on every Linear of the language model
except lm_head, the input embeddings and lm_head trained as full copies (peft ``modules_to_save``,
needed because [SEG] and friends are new tokens), the vision-to-LLM projector, SAM2's mask decoder
and ``text_hidden_fcs`` trained; the vision encoder, SAM2's image encoder and prompt encoder
frozen. peft wraps the whole Sa2VAModel, so trainable parameter names are
``base_model.model.<Sa2VAModel name>`` (e.g.
``base_model.model.mllm.model.language_model.layers.0.self_attn.q_proj.lora_A.default.weight``).
"""

from __future__ import annotations

import re
import types
from dataclasses import dataclass, field

import torch
from torch import nn

from vesselctl.errors import ConfigError, ModelError
from vesselctl.model.tokenizer import SA2VA_TOKENS
from vesselctl.settings.train import LoraSettings, TrainableSettings

# Tokens Sa2VA adds to the tokenizer; their embedding rows are what 'new_tokens' trains.
SA2VA_NEW_TOKENS = SA2VA_TOKENS


@dataclass
class ModuleNames:
    """Qualified names (inside Sa2VAModel) of the parts the trainable groups refer to."""

    language_model: str
    embeddings: str
    lm_head: str
    projector: str | None
    mask_decoder: str
    text_hidden_fcs: str
    sam2_image_encoder: str


@dataclass
class TrainableReport:
    """Trainable parameter counts per group, the LoRA target pattern, and totals."""

    groups: dict[str, int] = field(default_factory=dict)
    trainable: int = 0
    total: int = 0
    lora_target_pattern: str | None = None
    modules_to_save: list[str] = field(default_factory=list)
    trainable_token_indices: dict[str, list[int]] | None = None
    name_prefix: str = ""  # "base_model.model." when peft wraps the model

    def as_dict(self) -> dict:
        return {
            "groups": dict(self.groups),
            "trainable": self.trainable,
            "total": self.total,
            "lora_target_pattern": self.lora_target_pattern,
            "modules_to_save": list(self.modules_to_save),
            "trainable_token_indices": self.trainable_token_indices,
            "name_prefix": self.name_prefix,
        }


def _name_of(root: nn.Module, target: nn.Module, what: str) -> str:
    for name, module in root.named_modules():
        if module is target:
            return name
    raise ModelError(f"cannot find the {what} inside the model; is it a Sa2VAModel?")


def find_module_names(model: nn.Module) -> ModuleNames:
    """Locate the language model, embeddings, lm_head, projector, mask decoder of a Sa2VAModel."""
    for part in ("mllm", "sam2", "text_hidden_fcs"):
        if not hasattr(model, part):
            raise ModelError(
                f"model of type {type(model).__name__} has no '{part}' submodule; "
                "training expects a vesselctl Sa2VAModel"
            )
    mllm = model.mllm
    inner = getattr(mllm, "model", None)
    language_model = getattr(inner, "language_model", None)
    if language_model is None:
        language_model = mllm.get_decoder()
    projector = None
    for candidate in ("multi_modal_projector", "mlp1"):  # InternVL native / remote-code names
        if inner is not None and hasattr(inner, candidate):
            projector = getattr(inner, candidate)
            break
    if (
        projector is None
        and inner is not None
        and hasattr(getattr(inner, "visual", None), "merger")
    ):
        projector = inner.visual.merger  # Qwen2.5-VL's patch merger projects vision -> LLM
    return ModuleNames(
        language_model=_name_of(model, language_model, "language model"),
        embeddings=_name_of(model, mllm.get_input_embeddings(), "input embeddings"),
        lm_head=_name_of(model, mllm.get_output_embeddings(), "lm_head"),
        projector=_name_of(model, projector, "projector") if projector is not None else None,
        mask_decoder=_name_of(model, model.sam2.mask_decoder, "SAM2 mask decoder"),
        text_hidden_fcs="text_hidden_fcs",
        sam2_image_encoder=_name_of(model, model.sam2.vision_encoder, "SAM2 image encoder"),
    )


def lora_target_pattern(model: nn.Module, names: ModuleNames, lora: LoraSettings) -> str:
    """A regex (peft full-matches it against module names) selecting the LLM's LoRA targets."""
    language_model = model.get_submodule(names.language_model)
    leaf_names = sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in language_model.named_modules()
            if isinstance(module, nn.Linear) and name
        }
        - {"lm_head"}
    )
    if lora.targets == "all-linear":
        chosen = leaf_names
    else:
        unknown = [t for t in lora.targets if t not in leaf_names]
        if unknown:
            raise ConfigError(
                f"lora.targets: {', '.join(unknown)} not found among the LLM's Linear layers; "
                f"available: {', '.join(leaf_names)}"
            )
        chosen = list(lora.targets)
    if not chosen:
        raise ModelError("the language model has no Linear layers for LoRA")
    return rf"{re.escape(names.language_model)}\..*\.({'|'.join(map(re.escape, chosen))})"


def apply_trainable(
    model: nn.Module,
    lora: LoraSettings,
    groups: TrainableSettings,
    new_token_ids: list[int] | None = None,
) -> tuple[nn.Module, TrainableReport]:
    """Freeze ``model``, add LoRA and unfreeze the chosen groups; return the model to train.

    With LoRA (or new-token rows) the result is a ``peft.PeftModel`` wrapping ``model``
    (parameter names gain the prefix ``base_model.model.``); otherwise it is ``model`` itself.
    """
    from peft import LoraConfig, get_peft_model

    names = find_module_names(model)
    model.requires_grad_(False)
    report = TrainableReport()

    if groups.embeddings == "auto":
        raise ConfigError(
            "trainable.embeddings is 'auto', which TrainSettings resolves from model.kind; "
            "pass the resolved settings (full_copy, new_tokens or frozen)"
        )
    if groups.embeddings == "new_tokens" and not new_token_ids:
        raise ConfigError(
            "trainable.embeddings is 'new_tokens' but the tokenizer has none of "
            f"{', '.join(SA2VA_NEW_TOKENS)}; use 'full_copy' or 'frozen'"
        )
    token_ids = list(new_token_ids or [])
    if lora.enabled:
        pattern = lora_target_pattern(model, names, lora)
        modules_to_save = (
            [names.embeddings, names.lm_head] if groups.embeddings == "full_copy" else None
        )
        token_indices = (
            {names.embeddings: token_ids, names.lm_head: token_ids}
            if groups.embeddings == "new_tokens"
            else None
        )
        config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            use_rslora=lora.rslora,
            bias="none",
            target_modules=pattern,
            modules_to_save=modules_to_save,
            trainable_token_indices=token_indices,
        )
        trained = get_peft_model(model, config)
        report.lora_target_pattern = pattern
        report.modules_to_save = list(modules_to_save or [])
        report.trainable_token_indices = token_indices
    elif groups.embeddings == "new_tokens":
        from peft import TrainableTokensConfig

        trained = get_peft_model(
            model,
            TrainableTokensConfig(
                token_indices=token_ids, target_modules=[names.embeddings, names.lm_head]
            ),
        )
        report.trainable_token_indices = {names.embeddings: token_ids, names.lm_head: token_ids}
    else:
        # No LoRA: nothing else reads the original embeddings, so train them in place (the
        # copies of modules_to_save only matter beside adapters).
        trained = model
        if groups.embeddings == "full_copy":
            model.get_submodule(names.embeddings).requires_grad_(True)
            model.get_submodule(names.lm_head).requires_grad_(True)
    if report.trainable_token_indices:
        keep_token_indices_on_device(trained)
    base = trained.get_base_model() if hasattr(trained, "get_base_model") else trained
    report.name_prefix = "base_model.model." if trained is not model else ""

    unfreeze = {
        "projector": names.projector if groups.projector else None,
        "mask_decoder": names.mask_decoder if groups.mask_decoder else None,
        "text_hidden_fcs": names.text_hidden_fcs if groups.text_hidden_fcs else None,
        "sam2_image_encoder": names.sam2_image_encoder if groups.sam2_image_encoder else None,
    }
    if groups.projector and names.projector is None:
        raise ModelError("trainable.projector is true but the MLLM has no known projector module")
    for module_name in unfreeze.values():
        if module_name is not None:
            base.get_submodule(module_name).requires_grad_(True)

    report.groups = count_trainable_by_group(trained, names)
    report.trainable = sum(p.numel() for p in trained.parameters() if p.requires_grad)
    report.total = sum(p.numel() for p in trained.parameters())
    return trained, report


def keep_token_indices_on_device(model: nn.Module) -> int:
    """Give each of peft's trainable-token layers in ``model`` an index tensor kept on the
    weights' device; returns how many layers were changed.

    peft's ``TrainableTokensLayer.get_merged_weights`` builds the new-token index from a Python
    list and copies it to the GPU at every forward. A copy from pageable host memory waits for
    all queued GPU work first, so each step the CPU stopped in the LM head until the LLM's
    forward had finished, and the GPU then idled while the rest of the step was launched
    (issue 10's 4B trace: a 9.7 ms wait). Same merged weights (tested against peft's method).
    """
    try:
        from peft.tuners.trainable_tokens.layer import TrainableTokensLayer
    except ImportError:  # a peft without trainable tokens: nothing to change
        return 0
    changed = 0
    for module in model.modules():
        if isinstance(module, TrainableTokensLayer) and hasattr(module, "token_indices"):
            module.get_merged_weights = types.MethodType(_merged_weights, module)
            changed += 1
    return changed


def _merged_weights(layer: nn.Module, active_adapters: list[str]) -> torch.Tensor:
    """peft's merged weights (base rows with the new-token rows replaced), with the index
    tensor made once per adapter, device and index list."""
    weight = layer.base_layer.weight
    cache = layer.__dict__.setdefault("_device_token_index", {})
    for adapter_name in active_adapters:
        indices = tuple(layer.token_indices[adapter_name])
        key = (adapter_name, weight.device, indices)
        index = cache.get(key)
        if index is None:
            index = cache[key] = torch.tensor(indices, dtype=torch.long, device=weight.device)
        deltas = layer.trainable_tokens_delta[adapter_name].to(weight)
        weight = weight.index_copy(dim=0, index=index, source=deltas)
    return weight


def count_trainable_by_group(model: nn.Module, names: ModuleNames) -> dict[str, int]:
    """Trainable parameter counts: lora, embeddings, lm_head, projector, mask_decoder,
    text_hidden_fcs, sam2_image_encoder, other (anything else that trains: should be 0)."""
    prefixes = {
        "embeddings": names.embeddings,
        "lm_head": names.lm_head,
        "projector": names.projector,
        "mask_decoder": names.mask_decoder,
        "text_hidden_fcs": names.text_hidden_fcs,
        "sam2_image_encoder": names.sam2_image_encoder,
    }
    counts = dict.fromkeys(["lora", *prefixes, "other"], 0)
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        plain = name.removeprefix("base_model.model.")
        if ".lora_" in plain:
            counts["lora"] += param.numel()
            continue
        for group, prefix in prefixes.items():
            if prefix and (plain == prefix or plain.startswith(prefix + ".")):
                counts[group] += param.numel()
                break
        else:
            counts["other"] += param.numel()
    return counts
