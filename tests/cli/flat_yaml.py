"""Flatten `vesselctl config STAGE --yaml` output to dotted keys for assertions."""

from __future__ import annotations

from typing import Any

import yaml


def flat_yaml(text: str) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` YAML -> ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = node

    walk(yaml.safe_load(text) or {}, "")
    return flat
