"""Training data: a prepared dataset read through ``read_manifest``, turned into SegSamples, and a
batch sampler whose order depends only on (seed, epoch) so a run resumes at the exact sample.

Sample order: each epoch is a permutation of the split drawn from (seed, epoch). Optimiser step s
of an epoch uses positions [s*G, (s+1)*G) of that permutation (G = effective batch); within it,
micro-batch m of rank r takes G-slice [(m*world + r)*micro, ... + micro). A resume only needs the
epoch and the step inside it; the last partial global batch of an epoch is dropped so every rank
always runs the same number of steps.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from vesselctl.data.augment import augment_rng, augment_sample
from vesselctl.data.manifest import ManifestRecord, read_manifest
from vesselctl.errors import DatasetError
from vesselctl.model.batch import Sa2VABatch, SegSample
from vesselctl.settings.train import AugmentSettings

SampleKey = tuple[int, int]  # (epoch, index into the split)


def load_record(root: Path, record: ManifestRecord) -> tuple[np.ndarray, np.ndarray]:
    """Read one record's RGB image and its mask (bool; all False when the record has no mask)."""
    image_path = record.image_path(root)
    try:
        with Image.open(image_path) as img:
            image = np.asarray(img.convert("RGB"))
    except OSError as exc:
        raise DatasetError(
            f"{image_path}: cannot read the image of record '{record.id}' ({exc}); "
            "re-run `vesselctl prepare`"
        ) from exc
    mask_path = record.mask_path(root)
    if mask_path is None:
        return image, np.zeros(image.shape[:2], dtype=bool)
    try:
        with Image.open(mask_path) as img:
            mask = np.asarray(img.convert("L")) > 127
    except OSError as exc:
        raise DatasetError(
            f"{mask_path}: cannot read the mask of record '{record.id}' ({exc}); "
            "re-run `vesselctl prepare`"
        ) from exc
    if mask.shape != image.shape[:2]:
        raise DatasetError(
            f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
            f"{image.shape[1]}x{image.shape[0]}; re-run `vesselctl prepare`"
        )
    return image, mask


class SegDataset:
    """Map-style dataset keyed by (epoch, index): the epoch seeds the augmentation."""

    def __init__(
        self,
        root: Path,
        split: str,
        augment: AugmentSettings | None,
        seed: int,
        max_items: int = 0,
    ) -> None:
        self.root = Path(root)
        self.records = read_manifest(self.root, split)
        if max_items:
            self.records = self.records[:max_items]
        self.augment = augment
        self.seed = seed
        self.split = split

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: SampleKey | int) -> SegSample:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        record = self.records[index]
        image, mask = load_record(self.root, record)
        masks = [mask]
        if self.augment is not None:
            image, masks = augment_sample(
                image, masks, self.augment, augment_rng(self.seed, epoch, index)
            )
        return SegSample(sample_id=record.id, image=image, phrases=[record.phrase], masks=masks)


class StepBatchSampler:
    """Yields this rank's micro-batches of (epoch, index) keys, from a given position onward."""

    def __init__(
        self,
        num_samples: int,
        micro_batch: int,
        accumulation: int,
        rank: int,
        world_size: int,
        seed: int,
        start_epoch: int = 0,
        start_step_in_epoch: int = 0,
    ) -> None:
        self.global_batch = micro_batch * accumulation * world_size
        if num_samples < self.global_batch:
            raise DatasetError(
                f"the training split has {num_samples} images but one optimiser step needs "
                f"{self.global_batch} (micro_batch {micro_batch} x accumulation {accumulation} x "
                f"{world_size} processes); lower optim.micro_batch or optim.accumulation"
            )
        self.num_samples = num_samples
        self.micro_batch = micro_batch
        self.accumulation = accumulation
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.start_epoch = start_epoch
        self.start_step = start_step_in_epoch

    @property
    def steps_per_epoch(self) -> int:
        return self.num_samples // self.global_batch

    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed & 0xFFFFFFFF, epoch, 7]).permutation(
            self.num_samples
        )

    def __iter__(self) -> Iterator[list[SampleKey]]:
        epoch, step = self.start_epoch, self.start_step
        while True:
            order = self.permutation(epoch)
            for s in range(step, self.steps_per_epoch):
                base = s * self.global_batch
                for m in range(self.accumulation):
                    start = base + (m * self.world_size + self.rank) * self.micro_batch
                    yield [(epoch, int(i)) for i in order[start : start + self.micro_batch]]
            epoch, step = epoch + 1, 0


class SeededCollate:
    """Turn SegSamples into a Sa2VABatch with the processor, handing it a ``random.Random``
    seeded from the batch's keys: any random choice it makes (question wording) is then the
    same in a resumed run, in any worker, and does not touch the global generators."""

    def __init__(
        self,
        processor: Callable[..., Sa2VABatch],
        seed: int,
        train: bool,
        encoder_keys: bool = False,
    ) -> None:
        self.processor = processor
        self.seed = seed
        self.train = train
        self.encoder_keys = encoder_keys

    def __call__(self, items: list[tuple[SampleKey, SegSample]]) -> Sa2VABatch:
        keys = [k for k, _ in items]
        samples = [s for _, s in items]
        entropy = [self.seed & 0xFFFFFFFF] + [v for key in keys for v in key]
        rng = random.Random(int(np.random.SeedSequence(entropy).generate_state(1)[0]))
        batch = self.processor(samples, train=self.train, rng=rng)
        if self.encoder_keys:
            # Content keys for the frozen-encoder cache, hashed here in the worker on the CPU
            # pixels, before the batch moves to the GPU.
            from vesselctl.model.acceleration import attach_encoder_keys

            batch = attach_encoder_keys(batch)
        return batch


class KeyedDataset:
    """Wraps SegDataset so items carry their key to the collate function."""

    def __init__(self, dataset: SegDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: SampleKey) -> tuple[SampleKey, SegSample]:
        return key, self.dataset[key]
