"""Read every checkpoint a Sa2VA user meets and turn it into vesselctl's native weights.

Formats (``detect_format``):
- ``official_hf``: an official Sa2VA HF export (``convert_to_hf.py``: config.json with
  ``auto_map`` to remote code, full state dict in official names, tokenizer);
- ``official_iter``: an official training checkpoint ``iter_N.pth``: one file
  ``{'state_dict', 'meta', 'param_schedulers'}`` holding only the trained weights (LoRA A/B,
  ``modules_to_save`` copies or, in the older tree, full embeddings/lm_head; projector, SAM2 mask
  decoder, ``text_hidden_fcs``), or the DeepSpeed directory of the same name
  (``mp_rank_00_model_states.pt`` / ZeRO-3 ``zero_pp_rank_*`` shards);
- ``vesselctl_train``: vesselctl's own ``checkpoints/step_N`` (``trainable.safetensors`` + json);
- ``vesselctl_model``: a vesselctl model directory;
- base checkpoints: ``internvl_native`` (InternVL ``-hf``), ``internvl_remote`` (OpenGVLab
  remote-code layout), ``qwen2_5_vl``, ``sam2_original`` (``sam2_hiera_large.pt``),
  ``sam2_native`` (transformers ``Sam2Model`` directory).

Everything is read lazily (memory-mapped safetensors, ``torch.load(mmap=True)``), mapped key by
key through ``keymaps`` and accounted strictly: an official key no rule knows, a key that maps
to a parameter the model does not have, a shape that does not fit, or a model parameter that
nothing provides stops the load with a CheckpointError listing them.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vesselctl.errors import CheckpointError
from vesselctl.model.keymaps import (
    INTERNLM2_MARKERS,
    Target,
    format_key_list,
    map_key,
    strip_peft,
)
from vesselctl.model.lora_merge import LoraSpec, lora_spec_from_mmengine_cfg, merge_lora
from vesselctl.model.safe_load import load_torch_file

if TYPE_CHECKING:
    import torch

    from vesselctl.model.config import Sa2VAConfig

SAFETENSORS_INDEX = "model.safetensors.index.json"
DEEPSPEED_MODEL_FILES = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")
# What vesselctl's training writes into checkpoints/step_N (training/checkpoint.py uses these).
TRAINABLE_WEIGHTS = "trainable.safetensors"
TRAINABLE_META = "trainable.json"
DEEPSPEED_SUBDIR = "deepspeed"  # the ZeRO state inside a step folder (DeepSpeed's checkpoint tag)
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")

_ST_DTYPES = {
    "BF16": "bfloat16",
    "F16": "float16",
    "F32": "float32",
    "F64": "float64",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


# ----------------------------------------------------------------------------------------------
# Lazy tensor stores
# ----------------------------------------------------------------------------------------------
class TensorStore:
    """Name -> tensor, read on demand from safetensors files (memory-mapped) or a loaded dict.

    ``files`` lists what was read (for hashes in the model card).
    """

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.files: list[Path] = []
        self._dict: dict[str, torch.Tensor] = {}
        self._where: dict[str, Path] = {}
        self._handles: dict[Path, Any] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._dtypes: dict[str, str] = {}

    # construction -----------------------------------------------------------------------------
    @classmethod
    def from_safetensors(cls, paths: list[Path], origin: str) -> TensorStore:
        from safetensors import safe_open

        store = cls(origin)
        for path in paths:
            try:
                with safe_open(str(path), framework="pt") as handle:
                    for key in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                        if key in store._where or key in store._dict:
                            raise CheckpointError(
                                f"{path}: parameter '{key}' also appears in {store._where[key]}"
                            )
                        view = handle.get_slice(key)
                        store._where[key] = path
                        store._shapes[key] = tuple(view.get_shape())
                        store._dtypes[key] = _ST_DTYPES.get(view.get_dtype(), view.get_dtype())
            except CheckpointError:
                raise
            except Exception as exc:  # safetensors raises its own error types for bad headers
                raise CheckpointError(
                    f"{path}: cannot read the safetensors file; it is truncated or corrupt ({exc})"
                ) from exc
            store.files.append(path)
        return store

    @classmethod
    def from_dict(cls, tensors: dict[str, Any], origin: str, files: list[Path]) -> TensorStore:
        import torch

        store = cls(origin)
        for key, value in tensors.items():
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(
                    f"{origin}: entry '{key}' is a {type(value).__name__}, not a tensor; "
                    "expected a state dict of tensors"
                )
            store._dict[key] = value
            store._shapes[key] = tuple(value.shape)
            store._dtypes[key] = str(value.dtype).removeprefix("torch.")
        store.files = list(files)
        return store

    # access ------------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self._shapes)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._shapes))

    def __contains__(self, key: str) -> bool:
        return key in self._shapes

    def __len__(self) -> int:
        return len(self._shapes)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shapes[key]

    def dtype(self, key: str) -> str:
        return self._dtypes[key]

    def numel(self, key: str) -> int:
        n = 1
        for d in self._shapes[key]:
            n *= d
        return n

    def get(self, key: str) -> torch.Tensor:
        if key in self._dict:
            return self._dict[key]
        path = self._where[key]
        handle = self._handles.get(path)
        if handle is None:
            from safetensors import safe_open

            handle = safe_open(str(path), framework="pt")
            self._handles[path] = handle
        try:
            return handle.get_tensor(key)
        except Exception as exc:
            raise CheckpointError(f"{path}: cannot read tensor '{key}' ({exc})") from exc

    def file_of(self, key: str) -> Path | None:
        return self._where.get(key)

    def release(self, path: Path) -> None:
        """Close one file's memory map (its pages stop counting towards resident memory)."""
        self._handles.pop(path, None)

    def close(self) -> None:
        self._handles.clear()


def _safetensors_files(directory: Path) -> list[Path]:
    """The weight files of a HF-style directory: the index's shards, or every *.safetensors."""
    index = directory / SAFETENSORS_INDEX
    if index.is_file():
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
            names = sorted(set(data["weight_map"].values()))
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index}: cannot read the shard index ({exc})") from exc
        files = [directory / n for n in names]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(
                f"{index}: lists shard(s) that are not in the folder: {format_key_list(missing)}; "
                "the download or copy is incomplete"
            )
        return files
    return sorted(directory.glob("*.safetensors"))


def store_from_directory(directory: Path, origin: str) -> TensorStore:
    """Weights of a HF-style directory (safetensors, or a single pytorch_model.bin)."""
    files = _safetensors_files(directory)
    if files:
        return TensorStore.from_safetensors(files, origin)
    for name in ("pytorch_model.bin", "model.pth", "model.pt"):
        if (directory / name).is_file():
            data = load_torch_file(directory / name)
            return TensorStore.from_dict(
                unwrap_state_dict(data, directory / name), origin, [directory / name]
            )
    raise CheckpointError(
        f"{directory}: no weights found (expected *.safetensors with {SAFETENSORS_INDEX}, or "
        "pytorch_model.bin)"
    )


def unwrap_state_dict(data: Any, path: Path) -> dict[str, Any]:
    """The state dict inside the usual wrappers ('state_dict', 'model' or 'module' entries)."""
    if isinstance(data, dict):
        for key in ("state_dict", "model", "module"):
            if isinstance(data.get(key), dict):
                return data[key]
        if data and all(isinstance(k, str) for k in data):
            return data
    raise CheckpointError(
        f"{path}: expected a state dict (or a dict holding 'state_dict' / 'model' / 'module'), "
        f"found {type(data).__name__}"
    )


# ----------------------------------------------------------------------------------------------
# Format detection
# ----------------------------------------------------------------------------------------------
def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def deepspeed_dir(path: Path) -> Path | None:
    """The folder holding DeepSpeed model-state files: ``path`` or its ``latest`` tag."""
    if any((path / n).is_file() for n in DEEPSPEED_MODEL_FILES):
        return path
    latest = path / "latest"
    if latest.is_file():
        tagged = path / latest.read_text(encoding="utf-8").strip()
        if any((tagged / n).is_file() for n in DEEPSPEED_MODEL_FILES):
            return tagged
    if (path / DEEPSPEED_SUBDIR).is_dir():
        return deepspeed_dir(path / DEEPSPEED_SUBDIR)
    return None


def detect_format(path: Path) -> str:
    """Name the checkpoint format of ``path`` (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: not found")
    if path.is_file():
        if path.suffix == ".safetensors":
            return "safetensors"
        if path.suffix in TORCH_SUFFIXES:
            return "torch_file"
        raise CheckpointError(
            f"{path}: unknown checkpoint file type '{path.suffix}'; expected .pth/.pt/.bin "
            "or .safetensors"
        )
    if (path / TRAINABLE_WEIGHTS).is_file():
        return "vesselctl_train"
    config_path = path / "config.json"
    if config_path.is_file():
        config = read_json(config_path)
        model_type = str(config.get("model_type", ""))
        auto_map = json.dumps(config.get("auto_map", {}))
        if model_type == "vesselctl_sa2va":
            return "vesselctl_model"
        if "Sa2VA" in auto_map or model_type.startswith("sa2va"):
            return "official_hf"
        if model_type == "internvl_chat":
            return "internvl_remote"
        if model_type == "internvl":
            return "internvl_native"
        if model_type == "qwen2_5_vl":
            return "qwen2_5_vl"
        if model_type in ("sam2", "sam2_video"):
            return "sam2_native"
        raise CheckpointError(
            f"{config_path}: model_type '{model_type}' is not a Sa2VA, InternVL, Qwen2.5-VL or "
            "SAM2 checkpoint"
        )
    if deepspeed_dir(path) is not None:
        return "deepspeed"
    raise CheckpointError(
        f"{path}: not a checkpoint vesselctl knows: no config.json, {TRAINABLE_WEIGHTS}, or "
        f"DeepSpeed {DEEPSPEED_MODEL_FILES[0]}"
    )


# ----------------------------------------------------------------------------------------------
# Strict key accounting
# ----------------------------------------------------------------------------------------------
@dataclass
class KeyReport:
    """What happened to every key of one source: mapped, dropped by design, or refused."""

    source: str
    mapped: int = 0
    dropped: dict[str, str] = field(default_factory=dict)  # key -> reason
    unmapped: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)  # mapped to a parameter the model lacks
    mismatched: list[str] = field(default_factory=list)  # "key: found (a,b), expected (c,d)"
    resized: dict[str, tuple[int, int]] = field(default_factory=dict)  # rows: found -> model
    aliased: dict[str, str] = field(default_factory=dict)  # tied weight -> the one it copies

    def raise_if_bad(self) -> None:
        problems = []
        if self.unmapped:
            problems.append(
                f"{len(self.unmapped)} key(s) no key map knows: {format_key_list(self.unmapped)}"
            )
        if self.unexpected:
            problems.append(
                f"{len(self.unexpected)} key(s) map to parameters the model does not have: "
                f"{format_key_list(self.unexpected)}"
            )
        if self.mismatched:
            problems.append(
                f"{len(self.mismatched)} shape mismatch(es): {format_key_list(self.mismatched, 5)}"
            )
        if problems:
            raise CheckpointError(
                f"{self.source}: refusing a partial load: " + "; ".join(problems) + ". "
                "Check that the checkpoint and the base model / config belong together"
            )


@dataclass(frozen=True)
class Piece:
    """One source tensor feeding a native parameter (``op`` from the key map)."""

    store: TensorStore
    key: str
    op: str = "copy"
    index: int | None = None  # q/k/v position for split_qkv, row for row


EMBEDDING_KEYS = ("mllm.model.language_model.embed_tokens.weight", "mllm.lm_head.weight")


def plan_store(
    store: TensorStore,
    layout: str,
    expected: dict[str, tuple[int, ...]],
    growable: tuple[str, ...] = (),
) -> tuple[dict[str, list[Piece]], KeyReport]:
    """Map every key of a full (non-delta) store to native parameters, checking names/shapes.

    ``growable`` parameters may have fewer rows than the model (a base vocabulary before
    Sa2VA's tokens were added); they are padded with the mean row when read.
    """
    report = KeyReport(store.origin)
    plan: dict[str, list[Piece]] = {}
    for key in store:
        target = map_key(key, layout)
        if target is None:
            report.unmapped.append(key)
            continue
        if target.op == "drop":
            report.dropped[key] = target.reason
            continue
        _add_target(plan, report, store, key, target, expected, growable)
    return plan, report


def _add_target(
    plan: dict[str, list[Piece]],
    report: KeyReport,
    store: TensorStore,
    key: str,
    target: Target,
    expected: dict[str, tuple[int, ...]],
    growable: tuple[str, ...] = (),
) -> None:
    shape = store.shape(key)
    ok = True
    for i, native in enumerate(target.keys):
        if native not in expected:
            report.unexpected.append(f"{key} -> {native}")
            ok = False
            continue
        want = expected[native]
        if target.op == "split_qkv":
            fits = len(shape) == len(want) and shape[0] == 3 * want[0] and shape[1:] == want[1:]
        elif target.op == "row":
            fits = len(shape) == 2 and shape[0] == 1 and shape[1] == want[1]
        else:
            fits = shape == want
            if not fits and native in growable and shape[1:] == want[1:] and shape[0] < want[0]:
                plan.setdefault(native, []).append(Piece(store, key, "pad_rows"))
                report.resized[native] = (shape[0], want[0])
                continue
        if not fits:
            report.mismatched.append(f"{key}: found {shape}, expected {want} for {native}")
            ok = False
            continue
        index = i if target.op == "split_qkv" else target.row
        plan.setdefault(native, []).append(Piece(store, key, target.op, index))
    if ok:
        report.mapped += 1


def materialize(native_key: str, pieces: list[Piece], shape: tuple[int, ...]) -> torch.Tensor:
    """Build one native tensor from its pieces (copy / q-k-v slice / stacked rows)."""
    import torch

    first = pieces[0]
    if first.op == "copy":
        return first.store.get(first.key)
    if first.op == "pad_rows":
        # new token rows (Sa2VA's [SEG], <p>, ...) start at the mean of the existing ones
        base = first.store.get(first.key)
        extra = base.float().mean(dim=0, keepdim=True).to(base.dtype)
        return torch.cat([base, extra.expand(shape[0] - base.shape[0], -1)], dim=0)
    if first.op == "split_qkv":
        fused = first.store.get(first.key)
        size = fused.shape[0] // 3
        return fused[first.index * size : (first.index + 1) * size]
    if first.op == "row":
        rows = {p.index: p for p in pieces}
        if sorted(rows) != list(range(shape[0])):
            raise CheckpointError(
                f"{native_key}: rows {sorted(rows)} found, expected 0..{shape[0] - 1}"
            )
        return torch.cat([rows[r].store.get(rows[r].key) for r in range(shape[0])], dim=0)
    raise CheckpointError(f"{native_key}: unknown key-map op '{first.op}'")


# ----------------------------------------------------------------------------------------------
# Trained deltas (official iter_N.pth, DeepSpeed directories, vesselctl trainable exports)
# ----------------------------------------------------------------------------------------------
@dataclass
class Delta:
    """Trained weights to lay over a base: full replacements and LoRA factor pairs (native keys)."""

    origin: str
    replacements: dict[str, torch.Tensor] = field(default_factory=dict)
    lora: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    lora_spec: LoraSpec | None = None
    report: KeyReport | None = None
    # peft trainable tokens: native key -> (row indices, trained rows that replace them)
    token_rows: dict[str, tuple[list[int], torch.Tensor]] = field(default_factory=dict)


def _family_of_official_keys(keys: list[str], origin: str) -> str:
    if any(k.startswith("mllm.model.base_model.model.") for k in keys):
        return "qwen2_5_vl"
    if any(k.startswith(("mllm.model.language_model.", "mllm.model.mlp1.")) for k in keys):
        if any(marker in k for k in keys for marker in INTERNLM2_MARKERS):
            raise CheckpointError(
                f"{origin}: this is an InternLM2-based Sa2VA (8B/26B); transformers has no "
                "native class for InternLM2, so vesselctl cannot load it"
            )
        return "internvl"
    raise CheckpointError(
        f"{origin}: cannot tell the model family: no 'mllm.model.language_model.*' (InternVL) or "
        "'mllm.model.base_model.model.*' (Qwen2.5-VL) keys; is this a Sa2VA training checkpoint?"
    )


def build_delta(
    tensors: dict[str, torch.Tensor],
    layout: str,
    origin: str,
    expected: dict[str, tuple[int, ...]],
    lora_spec: LoraSpec | None,
    token_indices: dict[str, list[int]] | None = None,
) -> Delta:
    """Classify trained tensors (peft roles) and map them to native keys, strictly.

    ``token_indices`` (module name -> row ids, from trainable.json) places peft trainable-token
    rows: those rows of the embedding / lm_head are replaced by the trained ones.
    """
    delta = Delta(origin)
    report = KeyReport(origin)
    lora_parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        peft = strip_peft(key)
        if peft.role in ("original_module", "trainable_tokens_original"):
            report.dropped[key] = "frozen copy of a base weight (the base provides it)"
            continue
        target = map_key(peft.base, layout)
        if target is None:
            report.unmapped.append(key)
            continue
        if target.op == "drop":
            report.dropped[key] = target.reason
            continue
        if target.op != "copy" or len(target.keys) != 1:
            report.unmapped.append(f"{key} (trained weights with a {target.op} mapping)")
            continue
        native = target.keys[0]
        if native not in expected:
            report.unexpected.append(f"{key} -> {native}")
            continue
        if peft.role in ("lora_A", "lora_B"):
            lora_parts.setdefault(native, {})[peft.role] = tensor
        elif peft.role == "trainable_tokens_delta":
            module = peft.base.removesuffix(".weight")
            rows = (token_indices or {}).get(module)
            want = expected[native]
            if rows is None:
                raise CheckpointError(
                    f"{origin}: '{key}' holds trained token rows but trainable_token_indices "
                    f"has no entry for '{module}'; the row ids are needed to place them"
                )
            if tuple(tensor.shape) != (len(rows), *want[1:]) or max(rows) >= want[0]:
                report.mismatched.append(
                    f"{key}: found {tuple(tensor.shape)} for rows {rows[:5]}, expected "
                    f"({len(rows)}, {want[1]}) with rows < {want[0]} for {native}"
                )
                continue
            delta.token_rows[native] = (list(rows), tensor)
        else:  # plain, modules_to_save, base_layer: full trained tensor replaces the base one
            if tuple(tensor.shape) != expected[native]:
                report.mismatched.append(
                    f"{key}: found {tuple(tensor.shape)}, expected {expected[native]} for {native}"
                )
                continue
            if native in delta.replacements and peft.role != "modules_to_save":
                continue  # modules_to_save copies win over a plain duplicate
            delta.replacements[native] = tensor
        report.mapped += 1
    for native, parts in lora_parts.items():
        if set(parts) != {"lora_A", "lora_B"}:
            have = next(iter(parts))
            report.unmapped.append(f"{native}: has {have} but not its partner factor")
            continue
        delta.lora[native] = (parts["lora_A"], parts["lora_B"])
    if delta.lora and lora_spec is None:
        raise CheckpointError(
            f"{origin}: the checkpoint holds LoRA factors but not LoRA alpha; pass --lora-alpha "
            "(the lora_alpha of the training config)"
        )
    if lora_spec is not None and delta.lora:
        ranks = {a.shape[0] for a, _ in delta.lora.values()}
        if ranks != {lora_spec.r}:
            raise CheckpointError(
                f"{origin}: LoRA factors have rank(s) {sorted(ranks)} but the merge scales "
                f"every module with one rank (r={lora_spec.r}); per-module ranks (peft "
                "rank_pattern) are not supported"
            )
    delta.lora_spec = lora_spec if delta.lora else None
    report.raise_if_bad()
    delta.report = report
    return delta


def lora_rank(tensors: dict[str, torch.Tensor]) -> int | None:
    """Rank of the LoRA factors in a trained state dict (None without LoRA)."""
    for key, tensor in tensors.items():
        if ".lora_A." in key and tensor.ndim == 2:
            return int(tensor.shape[0])
    return None


@dataclass
class TrainedCheckpoint:
    """A training checkpoint read from disk, before it is laid over a base."""

    path: Path
    kind: str  # official_iter | deepspeed | vesselctl_train
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]
    files: list[Path]
    family: str | None
    layout: str
    lora_spec: LoraSpec | None
    info: dict[str, Any] = field(default_factory=dict)


def read_trained_checkpoint(
    path: Path,
    *,
    trust: bool = False,
    lora_alpha: float | None = None,
    rslora: bool | None = None,
) -> TrainedCheckpoint:
    """Read an official ``iter_N.pth`` (file or DeepSpeed dir) or a vesselctl ``step_N``."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "vesselctl_train":
        return _read_vesselctl_train(path, lora_alpha, rslora)
    if fmt == "torch_file":
        data = load_torch_file(path, trust=trust)
        if not (isinstance(data, dict) and isinstance(data.get("state_dict"), dict)):
            found = sorted(str(k) for k in data)[:20] if isinstance(data, dict) else []
            raise CheckpointError(
                f"{path}: expected an official training checkpoint holding 'state_dict' (and "
                f"'meta'); found {format_key_list(found) if found else type(data).__name__}"
            )
        tensors = dict(data["state_dict"])
        meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
        files, kind, info = [path], "official_iter", {}
    elif fmt == "deepspeed":
        tensors, meta, files, info = _read_deepspeed(path, trust)
        kind = "deepspeed"
        if (path / TRAINABLE_META).is_file():
            # a vesselctl step whose trainable.safetensors is missing: its DeepSpeed (ZeRO)
            # state, gathered on CPU, holds the same peft-named trainable weights
            return _read_vesselctl_train(path, lora_alpha, rslora, (tensors, files, info))
    else:
        raise CheckpointError(
            f"{path}: is a '{fmt}' checkpoint, not a training checkpoint (iter_N.pth, a DeepSpeed "
            "folder, or a vesselctl checkpoints/step_N folder)"
        )
    family = _family_of_official_keys(list(tensors), str(path))
    layout = "sa2va_train_qwen" if family == "qwen2_5_vl" else "sa2va_train_internvl"
    spec = None
    rank = lora_rank(tensors)
    if rank is not None:
        if lora_alpha is not None:
            spec = LoraSpec(rank, float(lora_alpha), bool(rslora))
        elif isinstance(meta.get("cfg"), str):
            spec = lora_spec_from_mmengine_cfg(meta["cfg"], rank)
    return TrainedCheckpoint(path, kind, tensors, meta, files, family, layout, spec, info)


def _read_vesselctl_train(
    path: Path,
    lora_alpha: float | None,
    rslora: bool | None,
    gathered: tuple[dict[str, torch.Tensor], list[Path], dict[str, Any]] | None = None,
) -> TrainedCheckpoint:
    """A vesselctl ``checkpoints/step_N``: ``trainable.safetensors`` or, when that export is
    missing, the weights gathered from its DeepSpeed folder (``gathered``)."""
    from safetensors.torch import load_file

    meta = read_json(path / TRAINABLE_META)
    weights = path / TRAINABLE_WEIGHTS
    if gathered is not None:
        tensors, weight_files, ds_info = gathered
    else:
        try:
            tensors = load_file(str(weights))
        except Exception as exc:
            raise CheckpointError(
                f"{weights}: cannot read it; truncated or corrupt ({exc})"
            ) from exc
        weight_files, ds_info = [weights], {}
    lora = meta.get("lora") or {}
    spec = None
    rank = lora_rank(tensors)
    if rank is not None:
        alpha = lora_alpha if lora_alpha is not None else lora.get("alpha")
        if alpha is None:
            raise CheckpointError(f"{path / TRAINABLE_META}: 'lora.alpha' is missing")
        use_rs = bool(rslora if rslora is not None else lora.get("rslora", False))
        if lora.get("r") not in (None, rank):
            raise CheckpointError(
                f"{path / TRAINABLE_META}: lora.r is {lora.get('r')} but the factors in "
                f"{TRAINABLE_WEIGHTS} have rank {rank}"
            )
        spec = LoraSpec(rank, float(alpha), use_rs)
    files = [*weight_files, path / TRAINABLE_META]
    return TrainedCheckpoint(
        path,
        "vesselctl_train",
        tensors,
        meta,
        files,
        None,
        "vesselctl",
        spec,
        info={"step": meta.get("step"), "model_source": meta.get("model_source"), **ds_info},
    )


def _read_deepspeed(
    path: Path, trust: bool
) -> tuple[dict[str, torch.Tensor], dict[str, Any], list[Path], dict[str, Any]]:
    """Full trained weights of a DeepSpeed checkpoint folder, gathered on CPU.

    ZeRO-1/2 keep full (bf16) weights in the model-state file. ZeRO-3 keeps empty placeholders
    there; the fp32 master weights are spread over the per-rank optimizer files
    (``fp32_flat_groups``): each rank holds, for every parameter in ``param_shapes`` order, a
    slice of ``ceil(numel / world_size)`` elements. deepspeed's own ``zero_to_fp32`` reads these
    files with ``weights_only=False`` (arbitrary unpickling), so the same gather is done here on
    files read by the safe loader.
    """
    import torch

    folder = deepspeed_dir(path)
    if folder is None:
        raise CheckpointError(f"{path}: no DeepSpeed model-state file found")
    model_file = next(folder / n for n in DEEPSPEED_MODEL_FILES if (folder / n).is_file())
    states = load_torch_file(model_file, trust=trust)
    if not isinstance(states, dict) or not isinstance(states.get("module"), dict):
        raise CheckpointError(f"{model_file}: no 'module' state dict; not a DeepSpeed checkpoint")
    module = dict(states["module"])
    meta = states.get("meta") if isinstance(states.get("meta"), dict) else {}
    files = [model_file]
    info: dict[str, Any] = {
        "global_steps": states.get("global_steps"),
        "ds_version": states.get("ds_version"),
        "dp_world_size": states.get("dp_world_size"),
    }
    param_shapes: dict[str, Any] = {}
    for group in states.get("param_shapes") or []:
        param_shapes.update(group)
    placeholders = [
        name for name in param_shapes if name not in module or module[name].numel() == 0
    ]
    if not placeholders:
        info["zero_stage"] = "<=2"
        return module, meta, files, info

    optim_files = sorted(
        folder.glob("*_optim_states.pt"),
        key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)],
    )
    if not optim_files:
        raise CheckpointError(
            f"{folder}: ZeRO-3 checkpoint without optimizer shards (*_optim_states.pt): the "
            f"weights of {len(placeholders)} parameters are only stored there"
        )
    flat_per_rank = []
    world_size = None
    for optim_file in optim_files:
        optim = load_torch_file(optim_file, trust=trust)
        osd = optim.get("optimizer_state_dict") if isinstance(optim, dict) else None
        if not isinstance(osd, dict) or "fp32_flat_groups" not in osd:
            raise CheckpointError(f"{optim_file}: no optimizer_state_dict.fp32_flat_groups")
        count = osd.get("partition_count")
        count = max(count) if isinstance(count, list) else count
        if world_size is None:
            world_size = int(count)
        flat_per_rank.append(torch.cat([g.reshape(-1).float() for g in osd["fp32_flat_groups"]]))
        files.append(optim_file)
    if world_size != len(optim_files):
        raise CheckpointError(
            f"{folder}: the shards say {world_size} ranks but {len(optim_files)} "
            "*_optim_states.pt files are present; a rank's shard is missing"
        )
    gathered: dict[str, torch.Tensor] = {}
    offset = 0
    for name, shape in param_shapes.items():
        numel = int(torch.Size(shape).numel())
        part = -(-numel // world_size)  # ceil
        pieces = [flat[offset : offset + part] for flat in flat_per_rank]
        if any(p.numel() != part for p in pieces):
            raise CheckpointError(
                f"{folder}: the optimizer shards end before parameter '{name}'; truncated files"
            )
        gathered[name] = torch.cat(pieces)[:numel].reshape(shape).clone()
        offset += part
    info["zero_stage"] = 3
    info["world_size"] = world_size
    # frozen/buffer entries of the module that are real tensors stay as they are
    for name, value in module.items():
        if name not in gathered and isinstance(value, torch.Tensor) and value.numel() > 0:
            gathered[name] = value
    return gathered, meta, files, info


# ----------------------------------------------------------------------------------------------
# Configs: official / base configs -> Sa2VAConfig
# ----------------------------------------------------------------------------------------------
_REMOTE_ONLY_KEYS = {
    "_name_or_path", "architectures", "auto_map", "transformers_version", "torch_dtype", "dtype",
    "use_flash_attn", "attn_implementation", "_attn_implementation_autoset", "model_type",
}  # fmt: skip


def _known_kwargs(config_cls: Any, data: dict[str, Any]) -> dict[str, Any]:
    """Keep only keys the native config class knows (remote-code configs carry extra ones)."""
    known = set(config_cls().to_dict())
    return {k: v for k, v in data.items() if k in known and k not in _REMOTE_ONLY_KEYS}


def internvl_config_from_remote(
    data: dict[str, Any], source: str, image_token_id: int, vocab_size: int
) -> Any:
    """Native ``InternVLConfig`` from a remote-code InternVL / Sa2VA config.json dict."""
    from transformers import InternVLConfig, InternVLVisionConfig, Qwen2Config

    vision = data.get("vision_config")
    llm = data.get("llm_config")
    if not isinstance(vision, dict) or not isinstance(llm, dict):
        raise CheckpointError(f"{source}: expected 'vision_config' and 'llm_config' objects")
    llm_arch = " ".join(llm.get("architectures") or [llm.get("model_type", "")])
    if "InternLM2" in llm_arch or llm.get("model_type") == "internlm2":
        raise CheckpointError(
            f"{source}: the LLM is InternLM2 (Sa2VA-8B/26B), which has no native transformers "
            "class; vesselctl supports the Qwen2-based sizes (1B, 4B, InternVL3-2B/8B/14B)"
        )
    if llm.get("model_type") not in ("qwen2", None):
        raise CheckpointError(
            f"{source}: llm_config.model_type is '{llm.get('model_type')}'; expected 'qwen2'"
        )
    size = int(data.get("force_image_size") or vision.get("image_size", 448))
    patch = int(vision.get("patch_size", 14))
    vision_kwargs = _known_kwargs(InternVLVisionConfig, vision)
    vision_kwargs.update(
        image_size=[size, size],
        patch_size=[patch, patch],
        attention_bias=bool(vision.get("qkv_bias", True)),
        use_qk_norm=bool(vision.get("qk_normalization", False)),
        use_absolute_position_embeddings=True,
    )
    if "attention_dropout" in vision:
        vision_kwargs["projection_dropout"] = vision["attention_dropout"]
    text_kwargs = _known_kwargs(Qwen2Config, llm)
    text_kwargs.update(vocab_size=vocab_size, tie_word_embeddings=False)
    ratio = float(data.get("downsample_ratio", 0.5))
    select = int(data.get("select_layer", -1))
    return InternVLConfig(
        vision_config=InternVLVisionConfig(**vision_kwargs),
        text_config=Qwen2Config(**text_kwargs),
        image_token_id=image_token_id,
        image_seq_length=int((size // patch * ratio) ** 2),
        downsample_ratio=ratio,
        vision_feature_layer=select,
        tie_word_embeddings=False,
    )


def qwen_config_from_dict(data: dict[str, Any], source: str, vocab_size: int) -> Any:
    """Native ``Qwen2_5_VLConfig`` from a Qwen2.5-VL / Sa2VA-Qwen config.json dict."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLTextConfig

    clean = {k: v for k, v in data.items() if k not in _REMOTE_ONLY_KEYS and k != "template"}
    clean.pop("auto_map", None)
    text = dict(clean.get("text_config") or {})
    # transformers < 4.52 wrote the text settings at the top level of the config
    for key in Qwen2_5_VLTextConfig().to_dict():
        if key not in text and key in data and key not in _REMOTE_ONLY_KEYS:
            text[key] = data[key]
    text.pop("model_type", None)
    text.update(vocab_size=vocab_size, tie_word_embeddings=False)
    clean["text_config"] = text
    vision = dict(clean.get("vision_config") or {})
    vision.pop("model_type", None)
    clean["vision_config"] = vision
    clean["tie_word_embeddings"] = False
    clean["vocab_size"] = vocab_size
    try:
        return Qwen2_5_VLConfig(**_known_kwargs(Qwen2_5_VLConfig, clean))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: not a usable Qwen2.5-VL config ({exc})") from exc


@functools.cache
def _sam2_candidates() -> dict[str, tuple[Any, dict[str, tuple[int, ...]]]]:
    from vesselctl.model.presets import sam2_hiera_large_config, sam2_tiny_config

    configs = {
        "SAM 2.0 Hiera-L (1024)": sam2_hiera_large_config(),
        "vesselctl tiny SAM2 (128)": sam2_tiny_config(128),
        "vesselctl tiny SAM2 (256)": sam2_tiny_config(256),
    }
    return {name: (config, sam2_shapes(config)) for name, config in configs.items()}


def infer_sam2_config(shapes: dict[str, tuple[int, ...]], source: str) -> Any:
    """The SAM2 config whose parameter shapes match ``shapes`` (native ``sam2.*`` keys).

    Released Sa2VA models all use SAM 2.0 Hiera-L at 1024; vesselctl's tiny preset uses a small
    Hiera. The original SAM2 checkpoints carry no config, so the architecture is recognised
    from the weights instead of assumed: the candidate that agrees on every shape present and
    explains the most keys wins (missing or extra keys are reported later, by the strict key
    accounting, with their names).
    """
    best, best_hits = None, 0
    for config, want in _sam2_candidates().values():
        common = [k for k in shapes if k in want]
        if any(shapes[k] != want[k] for k in common):
            continue
        if len(common) > best_hits and len(common) >= 0.5 * len(want):
            best, best_hits = config, len(common)
    if best is not None:
        return copy.deepcopy(best)
    trunk = shapes.get("sam2.vision_encoder.backbone.patch_embed.projection.weight")
    raise CheckpointError(
        f"{source}: the SAM2 weights match none of the known SAM2 architectures "
        f"({', '.join(_sam2_candidates())}); patch embedding shape {trunk}"
    )


def _meta_shapes(module_factory: Any) -> dict[str, tuple[int, ...]]:
    import torch

    with torch.device("meta"):
        module = module_factory()
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def sam2_shapes(sam2_config: Any) -> dict[str, tuple[int, ...]]:
    from transformers import Sam2Model

    return {"sam2." + k: v for k, v in _meta_shapes(lambda: Sam2Model(sam2_config)).items()}


def expected_shapes(config: Sa2VAConfig) -> dict[str, tuple[int, ...]]:
    """Native state-dict keys and shapes of ``Sa2VAModel(config)``, built on the meta device."""
    from vesselctl.model.sa2va import Sa2VAModel

    return _meta_shapes(lambda: Sa2VAModel(config))


# ----------------------------------------------------------------------------------------------
# Tokenizers
# ----------------------------------------------------------------------------------------------
def load_tokenizer(directory: Path) -> Any:
    """A local tokenizer, offline, never with remote code; Sa2VA's tokens must be in it."""
    from transformers import AutoTokenizer, PretrainedConfig

    try:
        # A generic config keeps AutoTokenizer from parsing the folder's remote-code config.json.
        tokenizer = AutoTokenizer.from_pretrained(
            str(directory),
            config=PretrainedConfig(),
            local_files_only=True,
            trust_remote_code=False,
        )
    except Exception as exc:  # transformers raises OSError/ValueError/... for missing files
        raise CheckpointError(
            f"{directory}: cannot load the tokenizer without remote code ({exc})"
        ) from exc
    if tokenizer.pad_token_id is None:
        # Qwen tokenizers pad with <|endoftext|>, which is also their eos token.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _token_id(tokenizer: Any, token: str, source: Path) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise CheckpointError(
            f"{source}: the tokenizer has no '{token}' token; Sa2VA checkpoints add [SEG], <p>, "
            "</p>, <vp>, </vp> to the base tokenizer"
        )
    return int(token_id)


# ----------------------------------------------------------------------------------------------
# Full models: official HF export, base checkpoints, vesselctl model directories
# ----------------------------------------------------------------------------------------------
@dataclass
class NativeSource:
    """A model readable as native parameters: ``pieces[native_key]`` says where each comes from."""

    config: Sa2VAConfig
    tokenizer: Any
    pieces: dict[str, list[Piece]]
    expected: dict[str, tuple[int, ...]]
    stores: list[TensorStore]
    reports: list[KeyReport]
    kind: str
    files: list[Path]
    processor: Any = None  # the saved processor of a vesselctl model folder (keeps its options)

    def tensor(self, native_key: str) -> torch.Tensor:
        return materialize(native_key, self.pieces[native_key], self.expected[native_key])


def _embedding_rows(store: TensorStore, layout: str) -> int:
    for key in store:
        target = map_key(key, layout)
        if target and any(k.endswith("language_model.embed_tokens.weight") for k in target.keys):
            return store.shape(key)[0]
    raise CheckpointError(f"{store.origin}: no token embedding (embed_tokens.weight) found")


def _finish(
    config: Sa2VAConfig,
    tokenizer: Any,
    stores_layouts: list[tuple[TensorStore, str]],
    kind: str,
    allow_missing: tuple[str, ...] = (),
    growable: tuple[str, ...] = (),
    tied_lm_head: bool = False,
) -> NativeSource:
    """Plan every store, check nothing is missing, and return the lazy native view.

    ``tied_lm_head``: the source ties lm_head to the token embedding (e.g. Qwen2.5-0.5B), so
    its file may omit lm_head; Sa2VA unties them, so lm_head starts as a copy.
    """
    expected = expected_shapes(config)
    pieces: dict[str, list[Piece]] = {}
    reports = []
    for store, layout in stores_layouts:
        plan, report = plan_store(store, layout, expected, growable)
        report.raise_if_bad()
        reports.append(report)
        for native, items in plan.items():
            if native in pieces:
                raise CheckpointError(
                    f"{store.origin}: parameter {native} is provided twice "
                    f"({pieces[native][0].key} and {items[0].key})"
                )
            pieces[native] = items
    embed, lm_head = EMBEDDING_KEYS
    if tied_lm_head and lm_head not in pieces and embed in pieces:
        pieces[lm_head] = pieces[embed]
        reports[0].aliased[lm_head] = embed
    missing = [k for k in expected if k not in pieces and not k.startswith(allow_missing)]
    if missing:
        sources = ", ".join(s.origin for s, _ in stores_layouts)
        raise CheckpointError(
            f"{sources}: refusing a partial load: {len(missing)} model parameter(s) are not in "
            f"the checkpoint: {format_key_list(missing)}"
        )
    files = [f for store, _ in stores_layouts for f in store.files]
    return NativeSource(
        config, tokenizer, pieces, expected, [s for s, _ in stores_layouts], reports, kind, files
    )


def _sa2va_config(
    family: str, mllm: Any, sam2: Any, template: str, tokenizer: Any, source: Path
) -> Sa2VAConfig:
    from vesselctl.model.config import Sa2VAConfig

    return Sa2VAConfig(
        family=family,
        mllm_config=mllm,
        sam2_config=sam2,
        template=template,
        seg_token_id=_token_id(tokenizer, "[SEG]", source),
    )


def _official_template(data: dict[str, Any], family: str, source: Path) -> str:
    if family == "qwen2_5_vl":
        return "qwen2_5_vl"
    template = str(data.get("template", "qwen_chat"))
    if template not in ("qwen_chat", "phi3_chat"):
        raise CheckpointError(
            f"{source / 'config.json'}: template '{template}' is not supported; expected "
            "qwen_chat or phi3_chat (InternLM2-based Sa2VA sizes are not supported)"
        )
    return template


def read_official_hf_export(directory: Path) -> NativeSource:
    """An official Sa2VA HF export as native parameters + Sa2VAConfig + tokenizer."""
    directory = Path(directory)
    data = read_json(directory / "config.json")
    store = store_from_directory(directory, str(directory))
    keys = store.keys()
    if any(k.startswith("model.") for k in keys) and not any(
        k.startswith("language_model.") for k in keys
    ):
        family, layout = "qwen2_5_vl", "sa2va_hf_qwen"
    else:
        family, layout = "internvl", "sa2va_hf_internvl"
        if any(m in k for k in keys for m in INTERNLM2_MARKERS):
            raise CheckpointError(
                f"{directory}: InternLM2-based Sa2VA (8B/26B) has no native transformers class; "
                "vesselctl cannot load it"
            )
    tokenizer = load_tokenizer(directory)
    rows = _embedding_rows(store, layout)
    _check_vocab(rows, tokenizer, directory)
    sam2 = infer_sam2_config(_native_sam2_shapes(store, layout), str(directory))
    if family == "internvl":
        image_id = _token_id(tokenizer, "<IMG_CONTEXT>", directory)
        mllm = internvl_config_from_remote(data, str(directory / "config.json"), image_id, rows)
    else:
        mllm = qwen_config_from_dict(data, str(directory / "config.json"), rows)
    template = _official_template(data, family, directory)
    config = _sa2va_config(family, mllm, sam2, template, tokenizer, directory)
    return _finish(
        config, tokenizer, [(store, layout)], "official_hf", tied_lm_head=_declares_tied(data)
    )


def _declares_tied(data: dict[str, Any]) -> bool:
    """Whether a (remote-code or native) config.json ties lm_head to the token embedding."""
    for section in (data.get("llm_config"), data.get("text_config"), data):
        if isinstance(section, dict) and "tie_word_embeddings" in section:
            return bool(section["tie_word_embeddings"])
    return False


def _native_sam2_shapes(store: TensorStore, layout: str) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for key in store:
        target = map_key(key, layout)
        if target is None or not target.keys or not target.keys[0].startswith("sam2."):
            continue
        shape = store.shape(key)
        for native in target.keys:
            if target.op == "row":
                prev = shapes.get(native, (0, shape[1]))
                shapes[native] = (prev[0] + 1, shape[1])
            else:
                shapes[native] = shape
    return shapes


def _check_vocab(rows: int, tokenizer: Any, source: Path) -> None:
    if rows < len(tokenizer):
        raise CheckpointError(
            f"{source}: the token embedding has {rows} rows but the tokenizer has "
            f"{len(tokenizer)} tokens; the tokenizer does not belong to these weights"
        )


def read_base_checkpoints(
    mllm_dir: Path, sam2_path: Path, tokenizer_dir: Path | None = None
) -> NativeSource:
    """Base MLLM (InternVL ``-hf`` / remote-code InternVL / Qwen2.5-VL) + SAM2 as native parts.

    The tokenizer comes from ``tokenizer_dir`` (e.g. a Sa2VA export's, holding [SEG]) or the
    MLLM folder; it must already hold Sa2VA's tokens.
    """
    mllm_dir, sam2_path = Path(mllm_dir), Path(sam2_path)
    fmt = detect_format(mllm_dir)
    data = read_json(mllm_dir / "config.json")
    layouts = {
        "internvl_native": "internvl_native",
        "internvl_remote": "internvl_remote",
        "qwen2_5_vl": "qwen2_5_vl",
    }
    if fmt not in layouts:
        raise CheckpointError(
            f"{mllm_dir}: is a '{fmt}' checkpoint; --mllm expects an InternVL (-hf or "
            "remote-code) or Qwen2.5-VL model folder"
        )
    layout = layouts[fmt]
    mllm_store = store_from_directory(mllm_dir, str(mllm_dir))
    tokenizer = load_tokenizer(tokenizer_dir or mllm_dir)
    if "[SEG]" not in tokenizer.get_vocab():
        # a base tokenizer: add Sa2VA's tokens as its training did ([SEG], <p>, </p>, <vp>,
        # </vp> appended in this order), and grow the embeddings to len(tokenizer)
        from vesselctl.model.tokenizer import add_sa2va_tokens

        add_sa2va_tokens(tokenizer)
    rows = max(_embedding_rows(mllm_store, layout), len(tokenizer))
    sam2_store, sam2_layout = _sam2_store(sam2_path)
    sam2 = infer_sam2_config(_native_sam2_shapes(sam2_store, sam2_layout), str(sam2_path))
    if fmt == "internvl_remote":
        family = "internvl"
        image_id = _token_id(tokenizer, "<IMG_CONTEXT>", mllm_dir)
        mllm = internvl_config_from_remote(data, str(mllm_dir / "config.json"), image_id, rows)
        template = _official_template(data, family, mllm_dir)
    elif fmt == "internvl_native":
        from transformers import InternVLConfig

        family = "internvl"
        mllm = InternVLConfig.from_pretrained(str(mllm_dir))
        mllm.text_config.vocab_size = rows
        mllm.text_config.tie_word_embeddings = False
        mllm.tie_word_embeddings = False
        template = "qwen_chat"
    else:
        family = "qwen2_5_vl"
        mllm = qwen_config_from_dict(data, str(mllm_dir / "config.json"), rows)
        template = "qwen2_5_vl"
    config = _sa2va_config(family, mllm, sam2, template, tokenizer, tokenizer_dir or mllm_dir)
    # text_hidden_fcs is not part of any base checkpoint: a training delta must provide it.
    return _finish(
        config,
        tokenizer,
        [(mllm_store, layout), (sam2_store, sam2_layout)],
        "base",
        allow_missing=("text_hidden_fcs.",),
        growable=EMBEDDING_KEYS,
        tied_lm_head=_declares_tied(data),
    )


def _sam2_store(path: Path) -> tuple[TensorStore, str]:
    if path.is_dir():
        fmt = detect_format(path)
        if fmt != "sam2_native":
            raise CheckpointError(f"{path}: --sam2 expects a SAM2 checkpoint, found '{fmt}'")
        return store_from_directory(path, str(path)), "sam2_native"
    if path.suffix == ".safetensors":
        return TensorStore.from_safetensors([path], str(path)), "sam2_native"
    data = load_torch_file(path)
    return TensorStore.from_dict(unwrap_state_dict(data, path), str(path), [path]), (
        "sam2_original"
    )


def read_vesselctl_model(directory: Path) -> NativeSource:
    """A vesselctl model directory (written by convert or model-core's save)."""
    from vesselctl.model.config import Sa2VAConfig
    from vesselctl.model.processor import Sa2VAProcessor

    directory = Path(directory)
    config = Sa2VAConfig.from_pretrained(str(directory))
    processor = Sa2VAProcessor.from_pretrained(directory)
    store = store_from_directory(directory, str(directory))
    layout = "vesselctl_model_internvl" if config.family == "internvl" else "vesselctl_model_qwen"
    source = _finish(config, processor.tokenizer, [(store, layout)], "vesselctl_model")
    source.processor = processor
    return source


def read_model_source(path: Path) -> NativeSource:
    """Any full model folder vesselctl can use as a base, by its detected format."""
    fmt = detect_format(path)
    if fmt == "official_hf":
        return read_official_hf_export(path)
    if fmt == "vesselctl_model":
        return read_vesselctl_model(path)
    raise CheckpointError(
        f"{path}: is a '{fmt}' checkpoint; --base expects an official Sa2VA HF export or a "
        "vesselctl model folder (use --mllm and --sam2 for base InternVL/Qwen + SAM2)"
    )


# ----------------------------------------------------------------------------------------------
# Merging a delta over a base, tensor by tensor
# ----------------------------------------------------------------------------------------------
@dataclass
class MergedWeights:
    """Native parameters of ``base`` with ``delta`` laid over them, produced one at a time.

    With ``merge_lora=False`` LoRA factors are left out of the weights (kept as an adapter).
    """

    base: NativeSource
    delta: Delta | None
    merge_lora: bool = True

    @property
    def config(self) -> Sa2VAConfig:
        return self.base.config

    def keys(self) -> list[str]:
        return list(self.base.expected)

    def shape(self, key: str) -> tuple[int, ...]:
        return self.base.expected[key]

    def tensor(self, key: str) -> torch.Tensor:
        delta = self.delta
        if delta is not None and key in delta.replacements:
            weight = delta.replacements[key]
        elif key in self.base.pieces:
            weight = self.base.tensor(key)
        else:
            raise CheckpointError(
                f"parameter {key} is in neither the base model nor the training checkpoint"
            )
        if delta is not None and key in delta.token_rows:
            import torch

            rows, values = delta.token_rows[key]
            index = torch.tensor(rows, dtype=torch.long)
            weight = weight.index_copy(0, index, values.to(weight.dtype))
        if delta is not None and self.merge_lora and key in delta.lora:
            lora_a, lora_b = delta.lora[key]
            spec = delta.lora_spec
            if spec is None:
                raise CheckpointError(f"{key}: LoRA factors without r/alpha")
            weight = merge_lora(weight, lora_a, lora_b, spec.scale, key)
        return weight

    def iter_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        for key in self.keys():
            yield key, self.tensor(key)


def merged_weights(
    base: NativeSource, trained: TrainedCheckpoint | None, merge_lora: bool = True
) -> MergedWeights:
    """Lay a trained checkpoint over its base, with strict key accounting of both."""
    if trained is None:
        missing = [k for k in base.expected if k not in base.pieces]
        if missing:
            raise CheckpointError(
                f"{base.files[0] if base.files else 'base'}: {len(missing)} parameter(s) are not "
                f"in the base and no training checkpoint provides them: {format_key_list(missing)}"
            )
        return MergedWeights(base, None, merge_lora)
    if trained.family is not None and trained.family != base.config.family:
        raise CheckpointError(
            f"{trained.path}: is a {trained.family} checkpoint but the base model is "
            f"{base.config.family}; pass the base the run was trained from"
        )
    indices = trained.meta.get("trainable_token_indices") if trained.meta else None
    delta = build_delta(
        trained.tensors,
        trained.layout,
        str(trained.path),
        base.expected,
        trained.lora_spec,
        indices if isinstance(indices, dict) else None,
    )
    missing = [k for k in base.expected if k not in base.pieces and k not in delta.replacements]
    if missing:
        raise CheckpointError(
            f"{trained.path}: refusing a partial load: {len(missing)} parameter(s) are in neither "
            f"the base nor the checkpoint: {format_key_list(missing)}"
        )
    return MergedWeights(base, delta, merge_lora)


# ----------------------------------------------------------------------------------------------
# Entry points used by model/load.py
# ----------------------------------------------------------------------------------------------
def load_official_hf_export(directory: Path) -> tuple[dict[str, torch.Tensor], Sa2VAConfig, Any]:
    """Official Sa2VA HF export -> (native state dict, Sa2VAConfig, tokenizer)."""
    source = read_official_hf_export(directory)
    weights = merged_weights(source, None)
    return dict(weights.iter_tensors()), source.config, source.tokenizer


def load_base_checkpoints(
    mllm_dir: Path, sam2_dir: Path, tokenizer_dir: Path | None = None
) -> tuple[dict[str, torch.Tensor], Sa2VAConfig, Any]:
    """Base MLLM + SAM2 -> (native state dict without ``text_hidden_fcs``, config, tokenizer).

    ``text_hidden_fcs`` is new in Sa2VA: the caller keeps the model's fresh initialisation.
    """
    source = read_base_checkpoints(mllm_dir, sam2_dir, tokenizer_dir)
    state = {k: source.tensor(k) for k in source.pieces}
    return state, source.config, source.tokenizer


def load_official_iter_checkpoint(
    path: Path,
    *,
    base: Path | None = None,
    mllm_dir: Path | None = None,
    sam2_dir: Path | None = None,
    trust: bool = False,
    lora_alpha: float | None = None,
) -> tuple[dict[str, torch.Tensor], Sa2VAConfig, Any]:
    """Official training checkpoint (file or DeepSpeed dir) + its base -> merged native weights."""
    trained = read_trained_checkpoint(path, trust=trust, lora_alpha=lora_alpha)
    source = resolve_base(trained, base, mllm_dir, sam2_dir)
    weights = merged_weights(source, trained)
    return dict(weights.iter_tensors()), source.config, source.tokenizer


def resolve_base(
    trained: TrainedCheckpoint,
    base: Path | None,
    mllm_dir: Path | None,
    sam2_dir: Path | None,
) -> NativeSource:
    """The base model a training checkpoint is laid over: --base, --mllm/--sam2, or (for
    vesselctl checkpoints) the model source recorded in trainable.json."""
    if base is not None:
        return read_model_source(Path(base))
    if mllm_dir is not None and sam2_dir is not None:
        return read_base_checkpoints(Path(mllm_dir), Path(sam2_dir))
    if mllm_dir is not None or sam2_dir is not None:
        raise CheckpointError("--mllm and --sam2 go together: pass both, or --base instead")
    recorded = trained.info.get("model_source") if trained.kind == "vesselctl_train" else None
    if isinstance(recorded, dict):
        kind = recorded.get("kind")
        if kind in ("vesselctl", "official_hf") and recorded.get("model_dir"):
            return read_model_source(Path(recorded["model_dir"]))
        if kind == "base" and recorded.get("mllm_dir") and recorded.get("sam2_dir"):
            return read_base_checkpoints(Path(recorded["mllm_dir"]), Path(recorded["sam2_dir"]))
        if kind == "preset":
            return rebuild_preset_base(trained, recorded)
        raise CheckpointError(
            f"{trained.path / TRAINABLE_META}: the run started from model source kind "
            f"'{kind}', whose weights cannot be found; pass --base DIR with the weights "
            "training started from"
        )
    raise CheckpointError(
        f"{trained.path}: a training checkpoint holds only the trained weights; pass the model "
        "it was trained from with --base DIR (official Sa2VA HF export or vesselctl model) or "
        "--mllm DIR --sam2 PATH"
    )


def run_seed(trained: TrainedCheckpoint) -> int | None:
    """The seed a vesselctl training run used: trainable.json's ``seed`` (read with the
    checkpoint), else the run folder's resolved ``settings.yaml``
    (``<run>/checkpoints/step_N`` -> ``<run>/settings.yaml``)."""
    import yaml

    seed = trained.meta.get("seed")
    if isinstance(seed, int):
        return seed
    settings_path = Path(trained.path).parent.parent / "settings.yaml"
    if settings_path.is_file():
        try:
            data = yaml.safe_load(settings_path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise CheckpointError(
                f"{settings_path}: cannot read the run's settings ({exc})"
            ) from exc
        if isinstance(data, dict) and isinstance(data.get("seed"), int):
            return int(data["seed"])
    return None


def rebuild_preset_base(trained: TrainedCheckpoint, recorded: dict[str, Any]) -> NativeSource:
    """The random-weight preset a run started from, rebuilt exactly as `train` built it.

    `train` seeds torch with the run's seed and then builds the model on the CPU, so the same
    seed and preset give the same initial weights (same torch version). The result is marked in
    the key accounting so the model card says where the frozen weights came from.
    """
    import torch

    from vesselctl.model.load import load_model
    from vesselctl.settings.model import ModelSourceSettings

    seed = run_seed(trained)
    if seed is None:
        raise CheckpointError(
            f"{trained.path}: the run trained a random-weight preset "
            f"('{recorded.get('preset')}') but its seed is in neither {TRAINABLE_META} nor "
            "the run folder's settings.yaml; pass --base DIR with the weights it started from"
        )
    # fp32 on the CPU with PyTorch attention: neither changes the random initialisation
    source = ModelSourceSettings.model_validate(
        {
            **recorded,
            "dtype": "float32",
            "attn_implementation": "sdpa",
            "gradient_checkpointing": False,
        }
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, processor = load_model(source)
    origin = f"preset '{source.preset}' rebuilt with seed {seed}"
    state = {k: v.detach() for k, v in model.state_dict().items()}
    store = TensorStore.from_dict(state, origin, [])
    native = _finish(model.config, processor.tokenizer, [(store, "vesselctl")], "preset")
    native.processor = processor
    return native


# ----------------------------------------------------------------------------------------------
# Writing: sharded safetensors in transformers' layout, streamed tensor by tensor
# ----------------------------------------------------------------------------------------------
def _source_file(weights: MergedWeights, key: str) -> Path | None:
    pieces = weights.base.pieces.get(key)
    if not pieces or (weights.delta is not None and key in weights.delta.replacements):
        return None
    return pieces[0].store.file_of(pieces[0].key)


def write_weights(
    weights: MergedWeights, folder: Path, dtype: torch.dtype, max_shard_bytes: int
) -> dict[str, Any]:
    """Write ``weights`` as ``model-0000i-of-0000N.safetensors`` + index into ``folder``.

    Memory stays bounded: tensors are read in source-file order, at most one shard is held,
    and each memory-mapped source file is closed once its last tensor is written. Returns the
    index (``metadata.total_size``, ``weight_map``).
    """
    from safetensors.torch import save_file

    position = {k: i for i, k in enumerate(weights.keys())}
    order = sorted(position, key=lambda k: (str(_source_file(weights, k) or ""), position[k]))
    remaining: dict[Path, int] = {}
    for key in order:
        path = _source_file(weights, key)
        if path is not None:
            remaining[path] = remaining.get(path, 0) + 1
    shard_names: list[str] = []
    weight_map: dict[str, str] = {}
    total = 0
    buffer: dict[str, torch.Tensor] = {}
    buffer_bytes = 0

    def flush() -> None:
        nonlocal buffer, buffer_bytes
        if not buffer:
            return
        name = f"model-{len(shard_names) + 1:05d}.tmp.safetensors"
        save_file(buffer, str(folder / name), metadata={"format": "pt"})
        shard_names.append(name)
        for k in buffer:
            weight_map[k] = name
        buffer, buffer_bytes = {}, 0

    for key in order:
        tensor = weights.tensor(key)
        if tensor.is_floating_point():
            tensor = tensor.to(dtype)
        # own the memory: a view into a memory-mapped source would keep its file resident
        tensor = tensor.contiguous().clone()
        size = tensor.numel() * tensor.element_size()
        if buffer and buffer_bytes + size > max_shard_bytes:
            flush()
        buffer[key] = tensor
        buffer_bytes += size
        total += size
        path = _source_file(weights, key)
        if path is not None:
            remaining[path] -= 1
            if remaining[path] == 0:
                for store in weights.base.stores:
                    store.release(path)
    flush()
    count = len(shard_names)
    final_names = {}
    for i, name in enumerate(shard_names):
        final = f"model-{i + 1:05d}-of-{count:05d}.safetensors"
        (folder / name).rename(folder / final)
        final_names[name] = final
    index = {
        "metadata": {"total_size": total},
        "weight_map": {k: final_names[v] for k, v in sorted(weight_map.items())},
    }
    from vesselctl.files import atomic_write_json

    atomic_write_json(folder / SAFETENSORS_INDEX, index)
    return index


def write_adapter(weights: MergedWeights, folder: Path, dtype: torch.dtype) -> dict[str, Any]:
    """Write the LoRA factors as a peft adapter for ``Sa2VAModel`` (``--keep-adapter``)."""
    from safetensors.torch import save_file

    from vesselctl.files import atomic_write_json

    delta = weights.delta
    if delta is None or not delta.lora or delta.lora_spec is None:
        raise CheckpointError("--keep-adapter: the checkpoint holds no LoRA factors to keep")
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    targets = []
    for native, (lora_a, lora_b) in sorted(delta.lora.items()):
        module = native.removesuffix(".weight")
        targets.append(module)
        tensors[f"base_model.model.{module}.lora_A.weight"] = lora_a.to(dtype).contiguous()
        tensors[f"base_model.model.{module}.lora_B.weight"] = lora_b.to(dtype).contiguous()
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    spec = delta.lora_spec
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "r": spec.r,
        "lora_alpha": spec.alpha,
        "use_rslora": spec.rslora,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": targets,
        "base_model_name_or_path": None,
        "inference_mode": True,
    }
    atomic_write_json(folder / "adapter_config.json", config)
    return config
