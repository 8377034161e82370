"""Deterministic, group-safe train/val/test splits, persisted in ``splits.json``.

First split: groups (a patient id taken from the file name by a regex, or each image alone) are
shuffled with the seed and dealt, largest relative shortfall first, until each split holds its
target number of images, so a group never spans two splits and small datasets still get exact
counts where the group sizes allow.

Re-runs: images already in ``splits.json`` keep their split. A new image joins the split of its
group when the group is known; otherwise a hash of ``(seed, group)`` picks the split with the
configured probabilities, so the choice does not depend on which other files were added.
Images that disappeared are dropped from the split and listed in the report.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vesselctl.data.manifest import SPLITS
from vesselctl.errors import DatasetError

SPLITS_NAME = "splits.json"
SPLITS_FORMAT = 1


def group_key(file_name: str, pattern: str | None) -> str | None:
    """The group of a file: the regex's first capture group (or whole match); None if no match.

    Without a pattern every file is its own group (the caller uses the id).
    """
    if pattern is None:
        return None
    match = re.search(pattern, file_name)
    if match is None:
        return None
    return match.group(1) if match.groups() else match.group(0)


def target_counts(total: int, val: float | int, test: float | int) -> dict[str, int]:
    """Images per split: fractions are rounded, counts taken as given, train gets the rest."""

    def count(share: float | int) -> int:
        return int(share) if isinstance(share, int) else round(share * total)

    n_val, n_test = count(val), count(test)
    if n_val + n_test > total:
        raise DatasetError(
            f"split: val ({n_val}) + test ({n_test}) images exceed the {total} images found; "
            "lower split.val / split.test"
        )
    return {"train": total - n_val - n_test, "val": n_val, "test": n_test}


def _hash_unit(seed: int, key: str) -> float:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True)
class SplitPlan:
    """The split of every id, and what changed against a previous splits.json."""

    assignment: dict[str, str]
    groups: dict[str, str]
    reused: int = 0
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    source: str = "new"

    def counts(self) -> dict[str, int]:
        counter = Counter(self.assignment.values())
        return {split: counter.get(split, 0) for split in SPLITS}

    def ids(self, split: str) -> list[str]:
        return sorted(i for i, s in self.assignment.items() if s == split)


def fresh_split(
    groups: Mapping[str, str], val: float | int, test: float | int, seed: int
) -> dict[str, str]:
    """Split ids (mapped to their group) from scratch; see the module docstring."""
    members: dict[str, list[str]] = {}
    for item_id in sorted(groups):
        members.setdefault(groups[item_id], []).append(item_id)
    keys = sorted(members)
    order = np.random.default_rng(seed).permutation(len(keys))
    targets = target_counts(len(groups), val, test)
    filled = dict.fromkeys(SPLITS, 0)
    assignment: dict[str, str] = {}

    def shortfall(split: str) -> float:
        return (targets[split] - filled[split]) / max(targets[split], 1)

    for position in order:
        key = keys[int(position)]
        # Ties go to the smaller splits first (val, test), so they are not starved.
        best = max(("val", "test", "train"), key=shortfall)
        if targets[best] == 0 and any(targets[s] > 0 for s in SPLITS):
            best = max((s for s in ("val", "test", "train") if targets[s] > 0), key=shortfall)
        for item_id in members[key]:
            assignment[item_id] = best
        filled[best] += len(members[key])
    return assignment


def plan_split(
    groups: Mapping[str, str],
    val: float | int,
    test: float | int,
    seed: int,
    previous: Mapping[str, str] | None = None,
    previous_groups: Mapping[str, str] | None = None,
    source: str = "new",
) -> SplitPlan:
    """Split ``groups`` (id -> group key), keeping assignments from ``previous`` where possible."""
    if not previous:
        return SplitPlan(fresh_split(groups, val, test, seed), dict(groups), source=source)
    previous_groups = previous_groups or {}
    group_split: dict[str, str] = {}
    for item_id, split in previous.items():
        key = previous_groups.get(item_id, item_id)
        group_split.setdefault(key, split)
    p_test = p_val = 0.0  # chances of a new group, from the configured shares
    if groups:
        targets = target_counts(len(groups), val, test)
        p_test, p_val = targets["test"] / len(groups), targets["val"] / len(groups)
    assignment: dict[str, str] = {}
    added: list[str] = []
    reused = 0
    for item_id in sorted(groups):
        key = groups[item_id]
        if item_id in previous and previous[item_id] in SPLITS:
            split = previous[item_id]
            reused += 1
        elif key in group_split:
            split = group_split[key]
            added.append(item_id)
        else:
            u = _hash_unit(seed, key)
            split = "test" if u < p_test else ("val" if u < p_test + p_val else "train")
            group_split[key] = split
            added.append(item_id)
        assignment[item_id] = split
    # A group must not span splits, even if the previous file says otherwise.
    spans: dict[str, set[str]] = {}
    for item_id, split in assignment.items():
        spans.setdefault(groups[item_id], set()).add(split)
    broken = sorted(k for k, s in spans.items() if len(s) > 1)
    if broken:
        raise DatasetError(
            f"{source}: the reused split puts group(s) {', '.join(broken[:5])} in more than one "
            "split (the group pattern changed?); set split.reuse=false to make a new split"
        )
    removed = sorted(set(previous) - set(groups))
    return SplitPlan(assignment, dict(groups), reused, added, removed, source)


def splits_document(
    plan: SplitPlan, seed: int, val: float | int, test: float | int, pattern: str | None
) -> dict[str, Any]:
    """The JSON written to splits.json (sorted, no timestamps: re-runs give the same bytes)."""
    return {
        "format": SPLITS_FORMAT,
        "settings": {"seed": seed, "val": val, "test": test, "group_pattern": pattern},
        "counts": plan.counts(),
        "splits": {split: plan.ids(split) for split in SPLITS},
        "groups": {item_id: plan.groups[item_id] for item_id in sorted(plan.groups)},
    }


@dataclass(frozen=True)
class StoredSplit:
    """A splits.json read back."""

    assignment: dict[str, str]
    groups: dict[str, str]
    settings: dict[str, Any]


def read_splits(path: Path) -> StoredSplit:
    """Read a splits.json written by prepare; DatasetError naming the problem otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(
            f"{path}: cannot read the split file ({exc}); delete it or set split.reuse=false"
        ) from exc
    if not isinstance(data, dict) or not isinstance(data.get("splits"), dict):
        raise DatasetError(
            f"{path}: no 'splits' mapping; expected a splits.json written by vesselctl prepare"
        )
    assignment: dict[str, str] = {}
    for split, ids in data["splits"].items():
        if split not in SPLITS or not isinstance(ids, list):
            raise DatasetError(
                f"{path}: split '{split}' is unknown or not a list; expected {', '.join(SPLITS)}"
            )
        for raw_id in ids:
            if not isinstance(raw_id, str | int) or isinstance(raw_id, bool):
                raise DatasetError(
                    f"{path}: split '{split}' holds {raw_id!r}; expected image ids as text; "
                    "delete the file or set split.reuse=false"
                )
            item_id = str(raw_id)
            if item_id in assignment:
                raise DatasetError(f"{path}: id '{item_id}' is in two splits; fix or delete it")
            assignment[item_id] = split
    groups = data.get("groups") if isinstance(data.get("groups"), dict) else {}
    settings = data.get("settings") if isinstance(data.get("settings"), dict) else {}
    return StoredSplit(assignment, {str(k): str(v) for k, v in groups.items()}, settings)
