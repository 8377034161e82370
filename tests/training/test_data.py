"""The step sampler: every sample once per epoch over all ranks, exact restart positions."""

from __future__ import annotations

import itertools

import pytest

from tests.training.synthetic import make_prepared_dataset
from vesselctl.errors import DatasetError
from vesselctl.settings.train import AugmentSettings
from vesselctl.training.data import KeyedDataset, SeededCollate, SegDataset, StepBatchSampler


def _take(sampler: StepBatchSampler, n: int) -> list[list[tuple[int, int]]]:
    return list(itertools.islice(iter(sampler), n))


def test_ranks_partition_each_epoch() -> None:
    n, micro, accum, world = 20, 2, 2, 2
    per_rank = [
        _take(StepBatchSampler(n, micro, accum, rank, world, seed=3), 8) for rank in range(world)
    ]
    steps = n // (micro * accum * world)  # 2 steps per epoch, 4 left over are dropped
    seen = [key for batches in per_rank for batch in batches[: steps * accum] for key in batch]
    assert len(seen) == len(set(seen)) == steps * micro * accum * world
    assert all(epoch == 0 for epoch, _ in seen)
    nxt = [key for batch in per_rank[0][steps * accum :] for key in batch]
    assert all(epoch == 1 for epoch, _ in nxt)


def test_restart_position_continues_the_same_sequence() -> None:
    full = _take(StepBatchSampler(12, 2, 3, 0, 1, seed=5), 30)
    # after 7 optimiser steps (2 steps per epoch): epoch 3, step 1
    restarted = _take(
        StepBatchSampler(12, 2, 3, 0, 1, seed=5, start_epoch=3, start_step_in_epoch=1), 9
    )
    assert restarted == full[21:30]


def test_world_size_change_keeps_the_global_batch_contents() -> None:
    one = _take(StepBatchSampler(16, 2, 2, 0, 1, seed=1), 2)  # one step, 4 samples
    two = [_take(StepBatchSampler(16, 2, 1, r, 2, seed=1), 1) for r in range(2)]
    assert sorted(k for b in one for k in b) == sorted(k for r in two for b in r for k in b)


def test_too_small_split_is_a_clear_error() -> None:
    with pytest.raises(DatasetError, match=r"lower optim\.micro_batch"):
        StepBatchSampler(3, 2, 1, 0, 2, seed=0)


def test_dataset_reads_samples_and_augments_by_key(tmp_path) -> None:
    root = make_prepared_dataset(tmp_path, n_train=3, n_val=1, size=32)
    plain = SegDataset(root, "train", None, seed=0)
    sample = plain[(0, 1)]
    assert sample.image.shape == (32, 32, 3) and sample.masks[0].dtype == bool
    assert sample.phrases == ["blood vessels"]
    augmented = SegDataset(root, "train", AugmentSettings(), seed=0)
    a, b = augmented[(0, 1)], augmented[(0, 1)]
    assert (a.image == b.image).all()
    assert len(SegDataset(root, "val", None, seed=0)) == 1


def test_collate_attaches_encoder_cache_keys_only_when_asked(tmp_path) -> None:
    from vesselctl.model.load import load_model
    from vesselctl.settings.model import ModelSourceSettings

    root = make_prepared_dataset(tmp_path, n_train=3, n_val=1, size=32)
    dataset = KeyedDataset(SegDataset(root, "train", None, seed=0))
    _, processor = load_model(ModelSourceSettings())
    items = [dataset[(0, 0)], dataset[(0, 1)], dataset[(1, 0)]]
    plain = SeededCollate(processor, seed=0, train=True)(items)
    assert plain.sam2_keys is None and plain.vision_keys is None
    keyed = SeededCollate(processor, seed=0, train=True, encoder_keys=True)(items)
    assert keyed.sam2_keys is not None and len(keyed.sam2_keys) == 3
    # without augmentation, the same image in another epoch gets the same key
    assert keyed.sam2_keys[0] == keyed.sam2_keys[2] != keyed.sam2_keys[1]
    assert keyed.vision_keys is not None and len(keyed.vision_keys) == len(keyed.pixel_values)


def test_missing_image_names_the_file(tmp_path) -> None:
    root = make_prepared_dataset(tmp_path, n_train=2, n_val=1, size=16)
    (root / "images" / "img_000.png").unlink()
    with pytest.raises(DatasetError, match=r"img_000\.png"):
        SegDataset(root, "train", None, seed=0)[(0, 0)]
