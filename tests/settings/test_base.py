"""Settings machinery: precedence, unknown keys with hints, clear type errors, resolved output."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import Field

from vesselctl.errors import ConfigError
from vesselctl.settings.base import (
    Section,
    describe_fields,
    field_help,
    load_settings,
    parse_override,
    write_resolved_settings,
)


class Inner(Section):
    seed: int = Field(0, description="Random seed.")
    fractions: list[float] = Field([0.8, 0.2], description="Split fractions.")


class Outer(Section):
    name: str = Field("run", description="Run name.")
    inner: Inner = Field(default_factory=Inner, description="Inner part.")


def test_defaults_when_nothing_given() -> None:
    s = load_settings(Outer)
    assert s.name == "run" and s.inner.seed == 0


def test_precedence_yaml_then_set_then_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: from_yaml\ninner:\n  seed: 1\n")
    s = load_settings(Outer, cfg, ["inner.seed=2"], {"name": "from_flag", "inner.fractions": None})
    assert s.name == "from_flag"
    assert s.inner.seed == 2
    assert s.inner.fractions == [0.8, 0.2]


def test_unknown_key_names_source_and_close_match(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("inner:\n  sed: 3\n")
    with pytest.raises(ConfigError) as info:
        load_settings(Outer, cfg)
    message = str(info.value)
    assert str(cfg) in message and "inner.sed" in message and "inner.seed" in message


def test_unknown_override_key() -> None:
    with pytest.raises(ConfigError, match=r"unknown setting 'nme'.*'name'"):
        load_settings(Outer, None, ["nme=x"])


def test_type_error_names_field_and_value() -> None:
    with pytest.raises(ConfigError, match=r"inner\.seed.*'abc'"):
        load_settings(Outer, None, ["inner.seed=abc"])


def test_override_values_are_yaml() -> None:
    assert parse_override("a.b=[1, 2]") == {"a": {"b": [1, 2]}}
    assert parse_override("x=true") == {"x": True}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("novalue")


def test_top_level_must_be_mapping(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(Outer, cfg)


def test_describe_and_help_come_from_descriptions() -> None:
    keys = {row[0]: row for row in describe_fields(Outer)}
    assert set(keys) == {"name", "inner.seed", "inner.fractions"}
    assert field_help(Outer, "inner.seed") == "Random seed."


def test_resolved_settings_round_trip(tmp_path: Path) -> None:
    s = load_settings(Outer, None, ["inner.seed=5"])
    path = write_resolved_settings(s, tmp_path)
    again = load_settings(Outer, path)
    assert again == s
    assert yaml.safe_load(path.read_text())["inner"]["seed"] == 5
