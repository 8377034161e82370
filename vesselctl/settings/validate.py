"""Settings of `vesselctl validate`: what to check, what to write, and how to read shapes.

The label map and the rasterisation settings are prepare's own parts, so validate sees the same
vessel mask and the same unknown labels that prepare would.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from vesselctl.settings.base import Section
from vesselctl.settings.prepare import LabelSettings, MaskFolderSettings, RasterSettings


class CheckSettings(Section):
    """Thresholds of the individual checks."""

    tiny_mask_pixels: int = Field(
        50,
        ge=0,
        description="Warn when an image has fewer vessel pixels than this (0 turns it off).",
    )
    bounds_tolerance: float = Field(
        0.0,
        ge=0.0,
        description="Pixels a shape point may lie outside the image before it is reported.",
    )
    min_pocket_pixels: int = Field(
        5,
        ge=1,
        description=(
            "Report a self-crossing polygon when its crossing leaves at least this many pixels "
            "unfilled (smaller pockets change nothing that matters)."
        ),
    )
    near_duplicates: bool = Field(
        False,
        description=(
            "Also look for resized or re-encoded copies by comparing 16x16 thumbnails (exact "
            "copies are always found)."
        ),
    )
    near_duplicate_similarity: float = Field(
        0.98,
        gt=0.0,
        le=1.0,
        description="Thumbnail correlation from which two images count as near duplicates.",
    )
    report_twists: bool = Field(
        False,
        description=(
            "Also warn about polygons that cross themselves without changing the fill "
            "(figure-eights, common in outlines traced from masks)."
        ),
    )


class StatsSettings(Section):
    """Dataset statistics printed and written to validation.json."""

    widths: bool = Field(
        True,
        description="Measure vessel widths along the mask skeleton (the slowest statistic).",
    )
    width_images: int = Field(
        100,
        ge=0,
        description=(
            "Measure widths on at most this many images, evenly spaced (0 measures every "
            "image); 100 images x thousands of skeleton pixels give a stable distribution."
        ),
    )


class ValidateSettings(Section):
    """Everything `vesselctl validate` needs."""

    path: Path = Field(
        description=(
            "LabelMe folder, folder of images with mask PNGs, or prepared dataset (a folder "
            "with manifest.jsonl) to check."
        )
    )
    out: Path | None = Field(
        None,
        description=(
            "Folder for validation.json, result.json, settings.yaml and run_info.json; "
            "without it nothing is written, only the summary is printed."
        ),
    )
    overlays: Path | None = Field(
        None, description="Folder to draw ground-truth overlays into (one PNG per image)."
    )
    strict: bool = Field(False, description="Fail (exit 1) on warnings as well as on errors.")
    show: int = Field(20, ge=0, description="How many problems to list in the printed summary.")
    workers: int = Field(
        0, ge=0, description="Worker processes for the per-file checks; 0 uses every core."
    )
    labels: LabelSettings = Field(
        default_factory=LabelSettings, description="Label map (the same part prepare uses)."
    )
    raster: RasterSettings = Field(
        default_factory=RasterSettings, description="Rasterising (the same part prepare uses)."
    )
    mask_folder: MaskFolderSettings = Field(
        default_factory=MaskFolderSettings,
        description="Image + mask folder pairing (the same part prepare uses).",
    )
    checks: CheckSettings = Field(default_factory=CheckSettings, description="Check thresholds.")
    stats: StatsSettings = Field(default_factory=StatsSettings, description="Dataset statistics.")

    @model_validator(mode="after")
    def _outputs_outside_input(self) -> ValidateSettings:
        """Validate only reads its input: refuse output folders inside it."""
        source = Path(self.path).resolve()
        for key in ("out", "overlays"):
            target = getattr(self, key)
            if target is None:
                continue
            resolved = Path(target).resolve()
            if resolved == source or resolved.is_relative_to(source):
                raise ValueError(
                    f"{key} '{target}' lies inside the checked folder '{self.path}'; "
                    "validate never writes into its input: choose a folder outside it"
                )
        return self
