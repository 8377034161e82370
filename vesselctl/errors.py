"""The error hierarchy: every expected failure is a VesselctlError with a message a user can act on.

Messages name the file, the field, what was found, what was expected and the fix. The CLI is the
only place that catches these; it prints the message on one line and exits with ``exit_code``.
"""

from __future__ import annotations


class VesselctlError(Exception):
    """Base class of all user-facing errors; ``exit_code`` is what the CLI exits with."""

    exit_code: int = 1


class ConfigError(VesselctlError):
    """Settings that cannot be used: unknown keys, wrong types, incompatible combinations."""

    exit_code = 2


class DatasetError(VesselctlError):
    """Annotations, images or masks that cannot be read or do not fit together."""


class CheckpointError(VesselctlError):
    """A checkpoint that cannot be read safely, or whose keys do not match the model."""


class ModelError(VesselctlError):
    """A model configuration or input that the model code cannot run."""


class TrainingError(VesselctlError):
    """A training run that has to stop: non-finite loss, out of memory, a bad resume."""


class EvaluationError(VesselctlError):
    """Predictions and ground truth that cannot be compared."""


class ReportError(VesselctlError):
    """Run folders or logs from which no report can be made."""
