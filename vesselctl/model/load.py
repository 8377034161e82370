"""``load_model``: the one entry point train, predict and convert use to get a model.

It dispatches on ``ModelSourceSettings.kind``: a random-weight preset, a vesselctl model folder
(``save_model_dir``), an official Sa2VA HF export or base MLLM + SAM2 checkpoints (the last two
through the key maps in ``model/checkpoints.py``). Every path returns the model with its
processor, in the requested dtype and attention kernel, on the CPU.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vesselctl.errors import CheckpointError, ModelError

if TYPE_CHECKING:
    import torch

    from vesselctl.model.config import Sa2VAConfig
    from vesselctl.model.processor import Sa2VAProcessor
    from vesselctl.model.sa2va import Sa2VAModel
    from vesselctl.settings.model import ModelSourceSettings

CONFIG_FILE = "config.json"


def resolve_dtype(name: str) -> torch.dtype:
    """``auto`` -> bfloat16 when a CUDA GPU is present, else float32; other names as is."""
    import torch

    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    if name not in ("bfloat16", "float16", "float32"):
        raise ModelError(f"model.dtype is '{name}'; expected auto, bfloat16, float16 or float32")
    return getattr(torch, name)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Build parameters directly in ``dtype`` (a 4B model in float32 first would need 16 GB)."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _skip_init() -> contextlib.AbstractContextManager:
    """transformers' ``no_init_weights`` (its module moved in 5.x), else a no-op: weights that
    are loaded right after need no random initialisation."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            return contextlib.nullcontext()
    return no_init_weights()


def _check_attention(attn: str) -> None:
    if attn == "flash_attention_2":
        import importlib.util

        if importlib.util.find_spec("flash_attn") is None:
            raise ModelError(
                "model.attn_implementation is flash_attention_2 but the flash-attn package is "
                "not installed; use sdpa (PyTorch's kernel, no extra package) or install flash-attn"
            )


def build_model(
    config: Sa2VAConfig, dtype: torch.dtype, attn: str, initialise: bool = True
) -> Sa2VAModel:
    """A ``Sa2VAModel`` for ``config`` in ``dtype``; ``initialise=False`` skips random init for
    weights that will be overwritten by a checkpoint."""
    from vesselctl.model.sa2va import Sa2VAModel

    _check_attention(attn)
    config._attn_implementation = attn
    context = contextlib.nullcontext() if initialise else _skip_init()
    with _default_dtype(dtype), context:
        model = Sa2VAModel(config)
    return model


def _load_native_state(
    model: Sa2VAModel, state: dict[str, Any], source: str, allowed_missing: tuple[str, ...] = ()
) -> None:
    """Copy ``state`` into ``model``; any unexpected key, or a missing one outside
    ``allowed_missing`` prefixes, refuses the load and names the keys."""
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(allowed_missing)]
    unexpected = list(result.unexpected_keys)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:5])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:5])})")
        raise CheckpointError(
            f"{source}: refusing a partial load: {'; '.join(parts)}; the weights do not match "
            "the model's architecture (run `vesselctl inspect` on the folder for the full list)"
        )


def _initialise_text_hidden_fcs(model: Sa2VAModel) -> None:
    """Fresh init of the [SEG] projection, which base checkpoints do not contain."""
    for module in model.text_hidden_fcs.modules():
        model._init_weights(module)


def _finish(model: Sa2VAModel, source: ModelSourceSettings) -> Sa2VAModel:
    if source.gradient_checkpointing:
        model.set_llm_gradient_checkpointing(True)
    if source.compile != "off":
        from vesselctl.model.acceleration import COMPILE_SETTING_PARTS, compile_blocks

        # Compiles lazily at the first call; a failure there falls back to eager (see
        # acceleration.run_with_compile_fallback).
        parts = COMPILE_SETTING_PARTS[source.compile]
        mode = getattr(source, "compile_mode", "default")  # a training setting only
        compile_blocks(model, parts, mode=None if mode == "default" else mode)
    return model


def _tokenizer_from(directory: Path) -> Any:
    from transformers import AutoTokenizer, PretrainedConfig

    try:
        # A generic config keeps AutoTokenizer from parsing the folder's own config.json.
        return AutoTokenizer.from_pretrained(
            directory, config=PretrainedConfig(), local_files_only=True
        )
    except (OSError, ValueError) as exc:
        raise ModelError(f"{directory}: cannot load a tokenizer from this folder ({exc})") from exc


def load_model(source: ModelSourceSettings) -> tuple[Sa2VAModel, Sa2VAProcessor]:
    """Build or load the model described by ``source``, with its processor."""
    from vesselctl.model.processor import Sa2VAProcessor

    dtype = resolve_dtype(source.dtype)
    attn = source.attn_implementation

    if source.kind == "preset":
        from vesselctl.model.presets import TINY_PROCESSOR_OVERRIDES, preset_config
        from vesselctl.model.tokenizer import build_tiny_tokenizer

        if source.tokenizer_dir is not None:
            tokenizer = _tokenizer_from(Path(source.tokenizer_dir))
        elif source.preset.startswith("tiny"):
            tokenizer = build_tiny_tokenizer()
        else:
            raise ModelError(
                f"model.preset '{source.preset}' is a real-size architecture with random "
                "weights; its processor needs the released tokenizer: set model.tokenizer_dir"
            )
        config = preset_config(source.preset, tokenizer)
        model = build_model(config, dtype, attn)
        overrides = TINY_PROCESSOR_OVERRIDES.get(source.preset, {})
        return _finish(model, source), Sa2VAProcessor(tokenizer, config, **overrides)

    if source.kind == "vesselctl":
        directory = Path(source.model_dir)  # type: ignore[arg-type]  # checked by settings
        if not (directory / CONFIG_FILE).is_file():
            raise CheckpointError(
                f"{directory}: no {CONFIG_FILE}; expected a folder written by vesselctl "
                "(train's final model or `vesselctl convert`); for an official Sa2VA HF export "
                "use model.kind=official_hf"
            )
        from vesselctl.model.checkpoints import read_json
        from vesselctl.model.config import Sa2VAConfig
        from vesselctl.model.sa2va import Sa2VAModel

        found = read_json(directory / CONFIG_FILE).get("model_type")
        if found != Sa2VAConfig.model_type:
            hint = (
                "; it looks like an official Sa2VA HF export: use model.kind=official_hf"
                if found and "sa2va" in found
                else ""
            )
            raise CheckpointError(
                f"{directory / CONFIG_FILE}: model_type is {found!r}, expected "
                f"'{Sa2VAConfig.model_type}' (a folder written by vesselctl){hint}"
            )
        _check_attention(attn)
        model = Sa2VAModel.from_pretrained(directory, dtype=dtype, attn_implementation=attn)
        processor = Sa2VAProcessor.from_pretrained(directory)
        return _finish(model, source), processor

    from vesselctl.model import checkpoints

    if source.kind == "official_hf":
        directory = Path(source.model_dir)  # type: ignore[arg-type]
        state, config, tokenizer = checkpoints.load_official_hf_export(directory)
        model = build_model(config, dtype, attn, initialise=False)
        _load_native_state(model, state, str(directory))
        return _finish(model, source), Sa2VAProcessor(tokenizer, config)

    if source.kind == "base":
        mllm_dir, sam2_dir = Path(source.mllm_dir), Path(source.sam2_dir)  # type: ignore[arg-type]
        tokenizer_dir = Path(source.tokenizer_dir) if source.tokenizer_dir else None
        state, config, tokenizer = checkpoints.load_base_checkpoints(
            mllm_dir, sam2_dir, tokenizer_dir
        )
        model = build_model(config, dtype, attn, initialise=False)
        _load_native_state(model, state, f"{mllm_dir} + {sam2_dir}", ("text_hidden_fcs.",))
        _initialise_text_hidden_fcs(model)
        return _finish(model, source), Sa2VAProcessor(tokenizer, config)

    raise ModelError(
        f"model.kind is '{source.kind}'; expected preset, vesselctl, official_hf or base"
    )


def save_model_dir(
    model: Sa2VAModel,
    processor: Sa2VAProcessor,
    path: str | Path,
    max_shard_size: str = "5GB",
    overwrite: bool = False,
) -> Path:
    """Write a complete vesselctl model folder: config.json, sharded safetensors, tokenizer and
    processor files. Written into a temporary sibling folder and renamed into place, so an
    interrupted save never leaves a folder that looks complete."""
    path = Path(path)
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise ModelError(
            f"{path}: folder exists and is not empty; choose a new folder or pass overwrite=True"
        )
    if processor.seg_token_id != model.config.seg_token_id:
        raise ModelError(
            f"processor's [SEG] id {processor.seg_token_id} differs from the model's "
            f"{model.config.seg_token_id}; save the processor built for this model"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        model.save_pretrained(staging, max_shard_size=max_shard_size, safe_serialization=True)
        processor.save_pretrained(staging)
        if path.exists():
            shutil.rmtree(path)
        staging.rename(path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path
