"""Validated settings: one pydantic model per stage, composed of shared parts.

``base`` holds the machinery (YAML + ``--set`` overrides + flags, unknown-key hints, resolved
settings written into run folders); each stage's model lives in its own module so stages can grow
independently. Nothing here imports torch.
"""

from vesselctl.settings.base import (
    Section,
    describe_fields,
    field_help,
    load_settings,
    settings_to_yaml,
    write_resolved_settings,
)

__all__ = [
    "Section",
    "describe_fields",
    "field_help",
    "load_settings",
    "settings_to_yaml",
    "write_resolved_settings",
]
