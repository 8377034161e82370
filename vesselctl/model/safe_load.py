"""Read ``.pth``/``.pt`` checkpoints without running code from the file.

Official Sa2VA checkpoints are written by mmengine/xtuner (and DeepSpeed); next to the tensors they
carry metadata objects (mmengine's ``HistoryBuffer``, DeepSpeed's loss scaler and ZeRO stage enum,
numpy arrays and scalars). ``torch.load(weights_only=True)`` refuses every global that is not on an
allowlist, so we pass an explicit one: numpy's array/scalar reconstructors, and for the foreign
metadata classes inert stand-ins registered under the foreign names. A stand-in only records the
arguments and state it was given; it never imports mmengine or DeepSpeed and never calls their
code. Anything else is refused with a message naming the global; ``trust=True`` (the CLI's
``--trust-checkpoint``) is the only way to full unpickling.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vesselctl.errors import CheckpointError

# Foreign metadata classes seen in mmengine/xtuner and DeepSpeed checkpoints. They are rebuilt as
# inert ForeignObject subclasses: the values they held stay readable (e.g. for `inspect`), but no
# foreign code runs.
FOREIGN_METADATA_CLASSES: tuple[str, ...] = (
    # mmengine MessageHub.state_dict()['log_scalars'] values in meta['message_hub']
    "mmengine.logging.history_buffer.HistoryBuffer",
    # DeepSpeed optimizer-state files: loss scaler objects and the ZeRO stage enum
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
)

_UNSUPPORTED_GLOBAL = re.compile(r"GLOBAL (\S+)")


class ForeignObject:
    """Inert record of a metadata object from a foreign class (mmengine, DeepSpeed).

    ``foreign_name`` is the class the file asked for; ``args`` the constructor arguments (enums
    and reduce-style pickles) and ``state`` the pickled attribute state.
    """

    foreign_name: str = ""
    # class-level defaults: pickles rebuilt through __new__ + BUILD never call __init__
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] | None = None
    state: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<{self.foreign_name} args={self.args!r} state={self.state!r}>"


def _stand_in(name: str) -> type[ForeignObject]:
    return type(name.rsplit(".", 1)[-1], (ForeignObject,), {"foreign_name": name})


def _numpy_globals() -> list[Callable[..., Any] | tuple[Callable[..., Any], str]]:
    """numpy's array/dtype/scalar reconstructors under the names numpy 1.x and 2.x pickle them."""
    import numpy as np

    core = np._core if hasattr(np, "_core") else np.core  # numpy 2 renamed core -> _core
    reconstruct = core.multiarray._reconstruct
    scalar = core.multiarray.scalar
    entries: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = [np.ndarray, np.dtype]
    for prefix in ("numpy.core.multiarray", "numpy._core.multiarray"):
        entries.append((reconstruct, f"{prefix}._reconstruct"))
        entries.append((scalar, f"{prefix}.scalar"))
    # numpy >= 1.25 pickles dtypes through their per-type classes; object arrays are left out.
    for name in dir(getattr(np, "dtypes", object())):
        cls = getattr(np.dtypes, name)
        if name.endswith("DType") and isinstance(cls, type) and name != "ObjectDType":
            entries.append(cls)
    return entries


def allowed_globals() -> list[Callable[..., Any] | tuple[Callable[..., Any], str]]:
    """The explicit allowlist passed to ``torch.serialization.safe_globals``."""
    entries = _numpy_globals()
    entries.extend((_stand_in(name), name) for name in FOREIGN_METADATA_CLASSES)
    return entries


def _unsafe_globals(path: Path) -> list[str]:
    """Globals in the file's pickle that are neither torch's defaults nor on our allowlist."""
    import torch

    allowed = {
        name for entry in allowed_globals() if isinstance(entry, tuple) for name in [entry[1]]
    }
    allowed |= {
        f"{e.__module__}.{e.__qualname__}" for e in allowed_globals() if not isinstance(e, tuple)
    }
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # legacy (non-zip) files cannot be scanned; the caller still refuses
        return []
    return [name for name in found if name not in allowed]


def load_torch_file(path: Path, *, trust: bool = False, mmap: bool = True) -> Any:
    """Load a ``.pth``/``.pt`` file safely (weights_only + explicit allowlist).

    ``mmap`` memory-maps tensor storage (zip-format files) so large checkpoints are paged in on
    demand. Raises CheckpointError naming the file for unsafe, truncated or corrupt files.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: checkpoint file is empty (0 bytes); re-copy or re-save it")
    use_mmap = mmap and zipfile.is_zipfile(path)
    try:
        if trust:
            # The user vouched for this file (--trust-checkpoint): full unpickling.
            return torch.load(path, map_location="cpu", weights_only=False, mmap=use_mmap)
        with torch.serialization.safe_globals(allowed_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=use_mmap)
    except pickle.UnpicklingError as exc:
        match = _UNSUPPORTED_GLOBAL.search(str(exc))
        names = _unsafe_globals(path) or ([match.group(1)] if match else [])
        if not names:
            detail = _unpickler_detail(exc)
            raise CheckpointError(
                f"{path}: refused to load: the checkpoint's pickle holds an object the safe loader "
                f"cannot rebuild ({detail}). If you trust where this file came from, re-run with "
                "--trust-checkpoint"
            ) from exc
        shown = ", ".join(names[:8]) + (f" (+{len(names) - 8} more)" if len(names) > 8 else "")
        raise CheckpointError(
            f"{path}: refused to load: the checkpoint's pickle needs the Python global(s) {shown}, "
            "which are not on vesselctl's allowlist of safe globals; unpickling them could run "
            "code from the file. If you trust where this file came from, re-run with "
            "--trust-checkpoint"
        ) from exc
    except Exception as exc:  # any parse failure of a damaged file: re-raised with the file named
        raise CheckpointError(
            f"{path}: cannot read the checkpoint; the file is truncated or corrupt "
            f"({_first_line(exc)}). Re-copy it or re-save it from the training run"
        ) from exc


def _unpickler_detail(exc: BaseException) -> str:
    """The one informative line of torch's long weights-only error."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.startswith("WeightsUnpickler error") and i + 1 < len(lines):
            return (line.split(":", 1)[1].strip() or lines[i + 1]).rstrip(".")
    return lines[0] if lines else type(exc).__name__


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
