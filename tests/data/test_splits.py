"""Deterministic, group-safe splits and their reuse on re-runs."""

from __future__ import annotations

import json

import pytest

from vesselctl.data.splits import (
    fresh_split,
    group_key,
    plan_split,
    read_splits,
    splits_document,
    target_counts,
)
from vesselctl.errors import DatasetError


def patient_groups(patients: int, per_patient: int) -> dict[str, str]:
    return {f"P{p:02d}_img{i}": f"P{p:02d}" for p in range(patients) for i in range(per_patient)}


def test_group_key_uses_first_capture_group_or_whole_match():
    assert group_key("P12_img3.json", r"^(P\d+)_") == "P12"
    assert group_key("P12_img3.json", r"^P\d+") == "P12"
    assert group_key("img3.json", r"^(P\d+)_") is None
    assert group_key("anything", None) is None


def test_target_counts_fractions_and_counts():
    assert target_counts(100, 0.1, 0.2) == {"train": 70, "val": 10, "test": 20}
    assert target_counts(40, 5, 0.1) == {"train": 31, "val": 5, "test": 4}
    with pytest.raises(DatasetError, match=r"exceed"):
        target_counts(10, 6, 5)


def test_split_is_deterministic_and_seed_dependent():
    groups = {f"img{i}": f"img{i}" for i in range(50)}
    first = fresh_split(groups, 0.1, 0.1, seed=3)
    assert first == fresh_split(dict(reversed(list(groups.items()))), 0.1, 0.1, seed=3)
    assert first != fresh_split(groups, 0.1, 0.1, seed=4)
    counts = {s: sum(1 for v in first.values() if v == s) for s in ("train", "val", "test")}
    assert counts == {"train": 40, "val": 5, "test": 5}


@pytest.mark.parametrize("seed", range(5))
def test_a_patient_never_spans_two_splits(seed):
    groups = patient_groups(12, 4)
    assignment = fresh_split(groups, 0.15, 0.15, seed)
    per_patient: dict[str, set[str]] = {}
    for item_id, split in assignment.items():
        per_patient.setdefault(groups[item_id], set()).add(split)
    assert all(len(splits) == 1 for splits in per_patient.values())
    assert {"train", "val", "test"} == set(assignment.values())


def test_reuse_keeps_old_assignments_places_new_files_by_group_and_drops_removed():
    groups = patient_groups(10, 3)
    first = plan_split(groups, 0.2, 0.2, seed=1)
    grown = dict(groups)
    del grown["P00_img0"]
    grown["P03_img9"] = "P03"  # a known patient: joins that patient's split
    grown["P77_img0"] = "P77"  # a new patient: placed by hash of (seed, group)
    second = plan_split(grown, 0.2, 0.2, 1, first.assignment, first.groups)
    for item_id in groups:
        if item_id in grown:
            assert second.assignment[item_id] == first.assignment[item_id]
    assert second.assignment["P03_img9"] == first.assignment["P03_img0"]
    assert second.removed == ["P00_img0"]
    assert sorted(second.added) == ["P03_img9", "P77_img0"]
    assert second.reused == len(groups) - 1
    # Adding the same new file again gives the same answer (no dependence on other files).
    third = plan_split({**grown, "Q1": "Q1"}, 0.2, 0.2, 1, first.assignment, first.groups)
    assert third.assignment["P77_img0"] == second.assignment["P77_img0"]


def test_reuse_refuses_a_previous_split_that_breaks_a_group():
    groups = {"a1": "A", "a2": "A"}
    with pytest.raises(DatasetError, match=r"more than one split"):
        plan_split(groups, 0.5, 0.0, 0, {"a1": "train", "a2": "val"}, {"a1": "a1", "a2": "a2"})


def test_splits_file_round_trip(tmp_path):
    groups = patient_groups(5, 2)
    plan = plan_split(groups, 0.2, 0.2, seed=0)
    path = tmp_path / "splits.json"
    path.write_text(json.dumps(splits_document(plan, 0, 0.2, 0.2, r"^(P\d+)_")))
    stored = read_splits(path)
    assert stored.assignment == plan.assignment
    assert stored.groups == groups
    assert stored.settings == {"seed": 0, "val": 0.2, "test": 0.2, "group_pattern": r"^(P\d+)_"}


def test_broken_splits_file_names_the_fix(tmp_path):
    path = tmp_path / "splits.json"
    path.write_text('{"splits": {"train": ["a"], "dev": ["b"]}}')
    with pytest.raises(DatasetError, match=r"split 'dev' is unknown"):
        read_splits(path)
    path.write_text("{not json")
    with pytest.raises(DatasetError, match=r"split.reuse=false"):
        read_splits(path)


def test_splits_file_with_non_text_ids_is_a_clear_error(tmp_path):
    """A hand-edited splits.json with a list as an id: DatasetError, not a TypeError."""
    path = tmp_path / "splits.json"
    path.write_text('{"splits": {"train": ["a", ["b"]]}}')
    with pytest.raises(DatasetError, match=r"splits.json: split 'train' holds \['b'\]"):
        read_splits(path)
