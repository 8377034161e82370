"""Settings of `vesselctl prepare`: LabelMe (or image+mask) folder -> training-ready dataset."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator

from vesselctl.settings.base import Section

if TYPE_CHECKING:
    from vesselctl.data.masks import LabelRoles, RasterOptions


class LabelSettings(Section):
    """The label map: what each LabelMe label means."""

    vessel: list[str] = Field(
        default_factory=lambda: ["vessel"],
        description="Labels whose shapes are vessel; all are OR-ed into one binary vessel mask.",
    )
    hole: list[str] = Field(
        default_factory=lambda: ["hole"],
        description="Labels whose shapes cut holes: they clear vessel pixels drawn before them.",
    )
    ignore: list[str] = Field(
        default_factory=list,
        description="Labels to skip; any label in none of vessel/hole/ignore is an error.",
    )

    @model_validator(mode="after")
    def _disjoint(self) -> LabelSettings:
        if not self.vessel:
            raise ValueError("labels.vessel is empty; name at least one vessel label")
        groups = {"vessel": self.vessel, "hole": self.hole, "ignore": self.ignore}
        seen: dict[str, str] = {}
        for group, labels in groups.items():
            for label in labels:
                if label in seen and seen[label] != group:
                    raise ValueError(
                        f"label '{label}' is in both labels.{seen[label]} and labels.{group}; "
                        "give each label one role"
                    )
                seen[label] = group
        return self

    def roles(self) -> LabelRoles:
        """The label map as the rasteriser takes it; prepare and validate both use this."""
        from vesselctl.data.masks import LabelRoles  # numpy: kept off the --help path

        return LabelRoles(frozenset(self.vessel), frozenset(self.hole), frozenset(self.ignore))


class RasterSettings(Section):
    """How shapes without area become pixels (widths in pixels of the source image)."""

    line_width: float = Field(
        10.0,
        ge=0,
        description="Width in source pixels of line/linestrip shapes (LabelMe draws 10).",
    )
    point_radius: float = Field(
        5.0,
        ge=0,
        description="Radius in source pixels of the disc drawn for point/points shapes.",
    )

    def options(self) -> RasterOptions:
        """These settings as the rasteriser takes them; prepare and validate both use this."""
        from vesselctl.data.masks import RasterOptions  # numpy: kept off the --help path

        return RasterOptions(self.line_width, self.point_radius)


class ResizeSettings(Section):
    """Output size; geometry is scaled and rasterised at this size."""

    height: int | None = Field(
        512, ge=8, le=8192, description="Output height in pixels; null keeps each image's own."
    )
    width: int | None = Field(
        512, ge=8, le=8192, description="Output width in pixels; null keeps each image's own."
    )
    png: Literal["fast", "small"] = Field(
        "fast",
        description="PNG writing: fast (default; an 8-bit PNG already at the output size is "
        "copied as is) or small (zlib 9); both lossless.",
    )

    @model_validator(mode="after")
    def _both_or_neither(self) -> ResizeSettings:
        if (self.height is None) != (self.width is None):
            raise ValueError(
                "resize.height and resize.width must both be set or both be null "
                f"(found height={self.height}, width={self.width})"
            )
        return self


class SplitSettings(Section):
    """The train/val/test split: deterministic, group-safe, persisted in splits.json."""

    val: float | int = Field(
        0.1, ge=0, description="Validation share: a fraction in [0, 1) or a count of images."
    )
    test: float | int = Field(
        0.1, ge=0, description="Test share: a fraction in [0, 1) or a count of images."
    )
    seed: int = Field(0, description="Seed of the split; the same seed gives the same split.")
    group_pattern: str | None = Field(
        None,
        description=(
            "Regex on the file name whose first group (or match) keys a group kept in one "
            r"split, e.g. '^(P\d+)_' for patient ids."
        ),
    )
    reuse: bool = Field(
        True,
        description="Reuse OUT_DIR/splits.json from an earlier run when its split settings match.",
    )
    file: Path | None = Field(
        None, description="A splits.json to reuse as is (e.g. from another prepared dataset)."
    )

    @field_validator("val", "test")
    @classmethod
    def _fraction_or_count(cls, value: float | int) -> float | int:
        if isinstance(value, float) and value >= 1:
            if value.is_integer():
                return int(value)
            raise ValueError(f"{value} is neither a fraction below 1 nor a whole count")
        return value

    @field_validator("group_pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"group_pattern {value!r} is not a valid regex: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _fractions_fit(self) -> SplitSettings:
        fractions = [v for v in (self.val, self.test) if isinstance(v, float)]
        if sum(fractions) >= 1:
            raise ValueError(
                f"split.val + split.test fractions sum to {sum(fractions)}; "
                "they must leave room for training (sum below 1)"
            )
        return self


class PromptSettings(Section):
    """The text side of each sample: the phrase and the question/answer templates."""

    phrase: str = Field("blood vessels", min_length=1, description="What the mask shows.")
    question: str = Field(
        "Please segment the {phrase}.",
        description="Question template; {phrase} is replaced by the phrase.",
    )
    answer: str = Field(
        "Sure, [SEG].", description="Answer template; must contain the [SEG] token once."
    )

    @model_validator(mode="after")
    def _templates(self) -> PromptSettings:
        if "{phrase}" not in self.question:
            raise ValueError(f"prompt.question {self.question!r} must contain {{phrase}}")
        if self.answer.count("[SEG]") != 1:
            raise ValueError(f"prompt.answer {self.answer!r} must contain [SEG] exactly once")
        return self


class MaskFolderSettings(Section):
    """Pairing rules when the input is images with binary mask PNGs instead of LabelMe."""

    images_dir: str = Field("images", description="Sub-folder holding the images.")
    masks_dir: str = Field(
        "masks", description="Sub-folder holding masks named like their image (same stem, .png)."
    )
    mask_suffix: str = Field(
        "_mask",
        description="Without images/masks sub-folders: <stem><suffix>.png next to <stem>.<ext>.",
    )


class Sa2vaSettings(Section):
    """How Sa2VA's annotations.json stores each image's vessel mask."""

    masks: Literal["rle", "polygons"] = Field(
        "rle",
        description="rle: COCO uncompressed RLE (exact; ~10x smaller and faster to write); "
        "polygons: flat COCO polygons with holes bridged; the official loader reads both.",
    )


class PrepareSettings(Section):
    """Everything `vesselctl prepare` needs."""

    input: Path | None = Field(
        None,
        description="LabelMe folder (searched recursively), or a folder of images + mask PNGs.",
    )
    output: Path | None = Field(None, description="Output folder of the prepared dataset.")
    input_format: Literal["auto", "labelme", "mask_folder"] = Field(
        "auto", description="Input kind; auto picks mask_folder when there is no JSON."
    )
    overwrite: bool = Field(
        False, description="Replace an existing prepared dataset in the output folder."
    )
    workers: int = Field(0, ge=0, description="Worker processes; 0 uses every CPU core.")
    progress: bool = Field(True, description="Show a progress bar (only on a terminal).")
    on_bad_file: Literal["fail", "skip"] = Field(
        "fail",
        description="fail: stop and list every bad file; skip: leave them out and report them.",
    )
    labels: LabelSettings = Field(default_factory=LabelSettings, description="Label map.")
    raster: RasterSettings = Field(default_factory=RasterSettings, description="Rasterising.")
    resize: ResizeSettings = Field(default_factory=ResizeSettings, description="Output size.")
    split: SplitSettings = Field(default_factory=SplitSettings, description="Data split.")
    prompt: PromptSettings = Field(default_factory=PromptSettings, description="Prompt text.")
    mask_folder: MaskFolderSettings = Field(
        default_factory=MaskFolderSettings, description="Image + mask folder pairing."
    )
    sa2va: Sa2vaSettings = Field(
        default_factory=Sa2vaSettings, description="Sa2VA annotations.json."
    )
