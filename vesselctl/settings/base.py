"""Settings machinery shared by every stage.

Precedence, lowest to highest: field defaults < YAML file (``--config``) < ``--set key.sub=value``
overrides < explicit command-line flags. Unknown keys are rejected before pydantic sees the data so
the message can name the key, where it came from and the closest valid key.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from vesselctl.errors import ConfigError
from vesselctl.files import atomic_write_text

SettingsT = TypeVar("SettingsT", bound=BaseModel)

RESOLVED_SETTINGS_NAME = "settings.yaml"


class Section(BaseModel):
    """Base of every settings model: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """Return the BaseModel class inside an annotation (``X``, ``X | None``), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        models = [a for a in typing.get_args(annotation) if _submodel(a) is not None]
        if len(models) == 1:
            return _submodel(models[0])
    return None


def _check_unknown_keys(
    cls: type[BaseModel], data: Mapping[str, Any], prefix: str, source: str
) -> None:
    """Raise ConfigError for the first key in ``data`` that ``cls`` does not define."""
    fields = cls.model_fields
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            valid = ", ".join(sorted(fields))
            raise ConfigError(
                f"{source}: unknown setting '{dotted}'{hint} Valid keys here: {valid}"
            )
        sub = _submodel(fields[key].annotation)
        if sub is not None and isinstance(value, Mapping):
            _check_unknown_keys(sub, value, f"{dotted}.", source)


def _deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``update`` into a copy of ``base``; nested mappings merge, everything else replaces."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def parse_override(text: str) -> dict[str, Any]:
    """Turn ``a.b.c=value`` into ``{"a": {"b": {"c": value}}}``; the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(
            f"--set {text!r}: expected KEY=VALUE with a dotted key, e.g. --set split.seed=7"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({exc})") from exc
    nested: dict[str, Any] = {}
    cursor = nested
    parts = key.split(".")
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = value
    return nested


def _flags_to_nested(flags: Mapping[str, Any]) -> dict[str, Any]:
    """Flags use dotted field paths as keys; those left as None were not given and are skipped."""
    nested: dict[str, Any] = {}
    for dotted, value in flags.items():
        if value is None:
            continue
        cursor = nested
        parts = dotted.split(".")
        for part in parts[:-1]:
            cursor = cursor.setdefault(part, {})
        cursor[parts[-1]] = value
    return nested


def read_yaml_config(path: Path) -> dict[str, Any]:
    """Read a YAML settings file; it must hold a mapping at the top level."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of settings at the top level, found {type(data).__name__}"
        )
    return data


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        found = err.get("input")
        found_text = "" if isinstance(found, Mapping) else f" (found {found!r})"
        lines.append(f"{source}: setting '{loc}': {err['msg']}{found_text}")
    return "; ".join(lines)


def load_settings(
    cls: type[SettingsT],
    config: Path | None = None,
    overrides: Sequence[str] = (),
    flags: Mapping[str, Any] | None = None,
) -> SettingsT:
    """Build ``cls`` from defaults, an optional YAML file, ``--set`` overrides and flags.

    Every layer is checked for unknown keys on its own so the error names where a bad key came
    from; pydantic then validates the merged result (types and cross-field checks).
    """
    layers: list[tuple[str, dict[str, Any]]] = []
    if config is not None:
        layers.append((str(config), read_yaml_config(Path(config))))
    for text in overrides:
        layers.append((f"--set {text}", parse_override(text)))
    if flags:
        layers.append(("command-line flags", _flags_to_nested(flags)))

    merged: dict[str, Any] = {}
    for source, data in layers:
        _check_unknown_keys(cls, data, "", source)
        merged = _deep_merge(merged, data)
    sources = ", ".join(s for s, _ in layers) or "defaults"
    try:
        return cls.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, sources)) from exc


def describe_fields(cls: type[BaseModel], prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """List ``(dotted_key, type, default, description)`` for every leaf setting of ``cls``."""
    rows: list[tuple[str, str, Any, str]] = []
    for name, info in cls.model_fields.items():
        dotted = f"{prefix}{name}"
        sub = _submodel(info.annotation)
        if sub is not None:
            rows.extend(describe_fields(sub, f"{dotted}."))
            continue
        type_name = getattr(info.annotation, "__name__", None) or str(info.annotation)
        type_name = type_name.replace("typing.", "")
        default = None if info.is_required() else info.get_default(call_default_factory=True)
        rows.append((dotted, type_name, default, info.description or ""))
    return rows


def field_help(cls: type[BaseModel], dotted: str) -> str:
    """The description of one (possibly nested) field: the single source of CLI help text."""
    current: type[BaseModel] = cls
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        info = current.model_fields[part]
        if i == len(parts) - 1:
            return info.description or ""
        sub = _submodel(info.annotation)
        if sub is None:
            raise KeyError(dotted)
        current = sub
    raise KeyError(dotted)


def reference_yaml(cls: type[BaseModel], indent: int = 0) -> list[str]:
    """A commented YAML file of ``cls``'s defaults, nested as ``--config`` reads it.

    Each key is preceded by its description, the same text as the CLI help.
    """
    lines: list[str] = []
    pad = "  " * indent
    for name, info in cls.model_fields.items():
        if info.description:
            lines.append(f"{pad}# {info.description}")
        sub = _submodel(info.annotation)
        if sub is not None:
            lines.append(f"{pad}{name}:")
            lines.extend(reference_yaml(sub, indent + 1))
            continue
        default = None if info.is_required() else info.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            default = default.model_dump(mode="json")
        elif isinstance(default, Path):
            default = str(default)
        value = yaml.safe_dump(default, default_flow_style=True, allow_unicode=True).strip()
        value = value.removesuffix("...").strip()
        lines.append(f"{pad}{name}: {value}")
    return lines


def settings_to_yaml(settings: BaseModel) -> str:
    """Serialise resolved settings as YAML (paths as strings, keys in declaration order)."""
    return yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def write_resolved_settings(
    settings: BaseModel, out_dir: Path, name: str = RESOLVED_SETTINGS_NAME
) -> Path:
    """Write the resolved settings into a run folder so the run can be traced and repeated."""
    path = Path(out_dir) / name
    atomic_write_text(path, settings_to_yaml(settings))
    return path
