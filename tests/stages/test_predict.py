"""predict end to end on the tiny preset, plus the tiling/TTA geometry on known arrays."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vesselctl.errors import ConfigError
from vesselctl.settings.base import load_settings
from vesselctl.settings.predict import PredictSettings
from vesselctl.stages import predict as stage


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from vesselctl.model.load import save_model_dir
    from vesselctl.model.presets import build_preset

    torch.manual_seed(0)
    model, processor = build_preset("tiny")
    path = tmp_path_factory.mktemp("model")
    save_model_dir(model, processor, path)
    return path


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(folder / "rgb.png")
    Image.fromarray(rng.integers(0, 255, (33, 30), dtype=np.uint8)).save(
        folder / "sub" / "gray.png"
    )
    Image.fromarray(rng.integers(0, 65535, (24, 24), dtype=np.uint16)).save(folder / "deep.png")
    return folder


def _settings(model: Path, source: Path, out: Path, *extra: str) -> PredictSettings:
    return load_settings(
        PredictSettings,
        None,
        ["inference.device=cpu", "progress=false", *extra],
        {"model": model, "input": source, "out": out},
    )


def test_outputs_match_inputs(tiny_model_dir: Path, images: Path, tmp_path: Path) -> None:
    out = tmp_path / "pred"
    result = stage.run(_settings(tiny_model_dir, images, out, "output.probabilities=npz"))
    assert result.predicted == 3 and not result.failures
    records = {r["id"]: r for r in map(json.loads, (out / "predictions.jsonl").open())}
    assert set(records) == {"rgb", "sub__gray", "deep"}
    sizes = {"rgb": (40, 56), "sub__gray": (33, 30), "deep": (24, 24)}
    for item_id, size in sizes.items():
        mask = np.asarray(Image.open(out / "masks" / f"{item_id}.png"))
        assert mask.shape == size and set(np.unique(mask)) <= {0, 255}
        prob = np.load(out / "probabilities" / f"{item_id}.npz")["prob"]
        assert prob.shape == size and prob.min() >= 0.0 and prob.max() <= 1.0
        # float16 storage may move values within 1e-3 of the threshold; elsewhere they agree
        clear = np.abs(prob.astype(np.float32) - 0.5) > 1e-3
        assert np.array_equal((mask == 255)[clear], (prob > 0.5)[clear])
        assert Image.open(out / "overlays" / f"{item_id}.png").size == (size[1], size[0])
        assert records[item_id]["mask_area"] == int((mask == 255).sum())
        score = records[item_id]["seg_token_probability"]
        assert 0.0 <= score <= 1.0 and records[item_id]["seg_predicted"] == (score > 0.5)
    assert json.loads((out / "result.json").read_text())["predicted"] == 3


def test_deterministic(tiny_model_dir: Path, images: Path, tmp_path: Path) -> None:
    stage.run(_settings(tiny_model_dir, images, tmp_path / "a"))
    stage.run(_settings(tiny_model_dir, images, tmp_path / "b"))
    for name in ("masks/rgb.png", "probabilities/sub__gray.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_non_empty_out_refused_then_resumed(
    tiny_model_dir: Path, images: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pred"
    stage.run(_settings(tiny_model_dir, images, out))
    with pytest.raises(ConfigError, match="not empty"):
        stage.run(_settings(tiny_model_dir, images, out))
    (out / "masks" / "deep.png").unlink()
    resumed = stage.run(_settings(tiny_model_dir, images, out, "output.skip_existing=true"))
    assert (resumed.predicted, resumed.skipped) == (1, 2)
    ids = [json.loads(line)["id"] for line in (out / "predictions.jsonl").open()]
    assert sorted(ids) == ["deep", "rgb", "sub__gray"]


def test_unreadable_image_listed_rest_predicted(
    tiny_model_dir: Path, images: Path, tmp_path: Path
) -> None:
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    result = stage.run(_settings(tiny_model_dir, images, tmp_path / "pred"))
    assert result.predicted == 3
    assert [f["id"] for f in result.failures] == ["broken"]


def test_tiles_and_tta_restore_size(tiny_model_dir: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    source = tmp_path / "big.png"
    Image.fromarray(rng.integers(0, 255, (150, 97, 3), dtype=np.uint8)).save(source)
    out = tmp_path / "pred"
    stage.run(
        _settings(
            tiny_model_dir,
            source,
            out,
            "inference.tile_size=64",
            "inference.tile_overlap=16",
            "inference.hflip_tta=true",
        )
    )
    assert np.asarray(Image.open(out / "masks" / "big.png")).shape == (150, 97)


def test_window_starts_cover_with_overlap() -> None:
    assert stage.window_starts(50, 64, 16) == [0]
    starts = stage.window_starts(150, 64, 16)
    assert starts[0] == 0 and starts[-1] == 150 - 64
    assert all(b - a <= 64 - 16 for a, b in itertools.pairwise(starts))


def test_stitch_undoes_flip_and_averages_tiles() -> None:
    h, w = 10, 30
    truth = np.tile(np.linspace(0, 1, w, dtype=np.float32), (h, 1))
    views = [
        stage.View((0, 0, h, 20), False),
        stage.View((0, 10, h, 30), False),
        stage.View((0, 0, h, 20), True),
    ]
    probs = [truth[:, :20], truth[:, 10:30], truth[:, :20][:, ::-1]]
    np.testing.assert_allclose(stage.stitch(views, probs, h, w, overlap=10), truth, atol=1e-6)


def test_overlay_tints_only_mask_pixels() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    mask = rng.random((20, 30)) > 0.5
    out = stage.overlay(image, mask, alpha=0.45)
    assert out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[~mask], image[~mask])
    expected = 0.55 * image[mask].astype(np.float64) + 0.45 * np.array(stage.OVERLAY_COLOUR)
    assert np.abs(out[mask] - expected).max() <= 1.0


def test_collated_ahead_keeps_order_and_skips_unreadable() -> None:
    from vesselctl.model.batch import SegSample
    from vesselctl.model.presets import build_preset

    _, processor = build_preset("tiny")
    image = np.full((24, 24, 3), 128, np.uint8)

    def group(*names: str | None) -> list:
        return [
            stage.LoadedImage(
                stage.PredictItem(str(n), None),
                None if n is None else image,
                [],
                [] if n is None else [processor.encode(SegSample(n, image, ["vessel"]), False)],
            )
            for n in names
        ]

    groups = [group("a", "b"), group(None), group("c", None)]
    pairs = list(stage.collated_ahead(iter(groups), processor))
    assert [g for g, _ in pairs] == groups
    ids = [None if b is None else b.sample_ids for _, b in pairs]
    assert ids == [["a", "b"], None, ["c"]]


def test_views_encoded_from_device_pixels_match_worker_encoding() -> None:
    """predict's GPU path (run here on the CPU): the group's views resized from a tensor give the
    batch the loader workers' PIL path gives, tokens equal, pixels within one grey level."""
    from vesselctl.model.presets import build_preset

    _, processor = build_preset("tiny")
    processor = processor.replace_options(normalise_on_device=True)
    settings = load_settings(
        PredictSettings,
        None,
        ["inference.hflip_tta=true", "inference.tile_size=64", "inference.tile_overlap=16"],
        {"model": Path("m"), "input": Path("i"), "out": Path("o")},
    )
    rng = np.random.default_rng(0)
    items = [
        stage.PredictItem(f"img{i}", None, rng.integers(0, 256, (70, 90, 3), dtype=np.uint8))
        for i in range(2)
    ]
    in_workers = stage.ImageViewsDataset(items, settings, processor, encode=True)
    on_device = stage.ImageViewsDataset(items, settings, processor, encode=False)
    reference = stage.collate_group(processor, [in_workers[i] for i in range(2)])
    loaded = [on_device[i] for i in range(2)]
    assert not loaded[0].encoded and len(loaded[0].views) > 2  # tiles, each also mirrored
    got = stage.collate_group(processor, loaded, settings.prompt, "cpu")
    assert torch.equal(got.input_ids, reference.input_ids)
    assert got.sample_ids == reference.sample_ids
    for name in ("pixel_values", "sam2_pixel_values"):
        a, b = getattr(got, name), getattr(reference, name)
        assert a.shape == b.shape and (a.int() - b.int()).abs().max() <= 1, name


def test_16_bit_images_are_scaled_as_the_model_processor_says(tmp_path: Path) -> None:
    """A dim 12-bit scan in a 16-bit PNG with a processor set to uint16_scaling image_max is
    stretched by its own maximum, as the processor does for in-memory images."""
    from vesselctl.model.presets import build_preset
    from vesselctl.model.tiling import to_rgb_uint8

    path = tmp_path / "scan.png"
    pixels = np.random.default_rng(0).integers(0, 4096, (20, 30), dtype=np.uint16)
    Image.fromarray(pixels).save(path)
    _, processor = build_preset("tiny")
    settings = load_settings(
        PredictSettings, None, [], {"model": Path("m"), "input": Path("i"), "out": Path("o")}
    )
    for scaling in ("image_max", "full_range"):
        dataset = stage.ImageViewsDataset(
            [stage.PredictItem("scan", path)],
            settings,
            processor.replace_options(uint16_scaling=scaling),
        )
        np.testing.assert_array_equal(dataset[0].image, to_rgb_uint8(pixels, scaling))


def test_prepared_dataset_split(tiny_model_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    lines = []
    for i, split in enumerate(["train", "test", "test"]):
        Image.fromarray(np.full((20, 20, 3), 40 * i, np.uint8)).save(root / "images" / f"s{i}.png")
        lines.append(
            {
                "id": f"s{i}",
                "split": split,
                "image": f"images/s{i}.png",
                "mask": None,
                "phrase": "blood vessels",
                "height": 20,
                "width": 20,
            }
        )
    (root / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    result = stage.run(_settings(tiny_model_dir, root, tmp_path / "pred", "split=test"))
    assert result.predicted == 2
    assert sorted(p.stem for p in (tmp_path / "pred" / "masks").iterdir()) == ["s1", "s2"]


def test_two_processes_through_torchrun(tiny_model_dir: Path, images: Path, tmp_path: Path) -> None:
    """`inference.gpus=2` relaunches under torchrun (gloo on the CPU); rank 0 merges the log."""
    out = tmp_path / "pred"
    result = stage.run(_settings(tiny_model_dir, images, out, "inference.gpus=2"))
    assert result.predicted == 3 and not result.failures
    ids = sorted(json.loads(line)["id"] for line in (out / "predictions.jsonl").open())
    assert ids == ["deep", "rgb", "sub__gray"]
    assert not list(out.glob(".predictions.rank*")) and not (out / ".predict_launch.yaml").exists()
