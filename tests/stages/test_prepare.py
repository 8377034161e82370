"""`prepare` end to end on small synthetic LabelMe folders."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from vesselctl.data.images import read_image
from vesselctl.data.manifest import read_manifest
from vesselctl.data.masks import fill_rings, resample_mask
from vesselctl.data.synthetic import (
    draw_vessel_mask,
    labelme_document,
    make_sample,
    mask_to_labelme_shapes,
    write_labelme_dataset,
    write_mask_folder_dataset,
)
from vesselctl.errors import ConfigError, DatasetError
from vesselctl.settings.prepare import PrepareSettings
from vesselctl.stages import prepare

GROUPS = r"^(P\d+)_"


def settings(src: Path, out: Path, **kwargs) -> PrepareSettings:
    data = {"input": src, "output": out, "workers": 1, "progress": False, **kwargs}
    return PrepareSettings.model_validate(data)


def tree_hashes(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def labelme_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("labelme")
    write_labelme_dataset(folder, 12, seed=11, sizes=(512, 800), embed_every=4, patients=4)
    return folder


@pytest.fixture(scope="module")
def prepared(labelme_dir, tmp_path_factory) -> tuple[Path, prepare.PrepareResult]:
    out = tmp_path_factory.mktemp("run") / "out"
    return out, prepare.run(
        settings(labelme_dir, out, overwrite=True, split={"group_pattern": GROUPS})
    )


@pytest.fixture(scope="module")
def prepared_polygons(labelme_dir, tmp_path_factory) -> Path:
    """The same data with annotations.json holding polygons instead of RLE."""
    out = tmp_path_factory.mktemp("run-polygons") / "out"
    prepare.run(settings(labelme_dir, out, sa2va={"masks": "polygons"}))
    return out


def decode_segment(segment, height: int, width: int) -> np.ndarray:
    """One segment of an annotations.json mask: COCO uncompressed RLE or a flat polygon."""
    if isinstance(segment, dict):
        assert segment["size"] == [height, width]
        counts = np.asarray(segment["counts"])
        assert counts.sum() == height * width and (counts[1:] > 0).all()
        values = np.arange(len(counts)) % 2 == 1  # runs alternate, background first
        return np.repeat(values, counts).reshape(width, height).T
    return fill_rings([np.asarray(segment).reshape(-1, 2)], height, width)


def test_layout_manifest_and_masks(labelme_dir, prepared):
    out, result = prepared
    assert result.prepared == result.found == 12
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            "images",
            "masks",
            "sa2va",
            "manifest.jsonl",
            "splits.json",
            "prepare_report.json",
            "settings.yaml",
            "run_info.json",
            "result.json",
        ]
    )
    records = read_manifest(out)
    assert [r.id for r in records] == sorted(r.id for r in records)
    for record in records:
        index = int(record.id.rsplit("img", 1)[1])
        size = 512 if index % 2 == 0 else 800
        image, mask = read_image(out / record.image), read_image(out / record.mask)
        assert image.shape == mask.shape == (512, 512)
        assert set(np.unique(mask)) <= {0, 255}
        assert record.extra["orig_height"] == size
        assert record.extra["scale_x"] == pytest.approx(512 / size)
        assert (
            record.extra["sha256_mask"]
            == hashlib.sha256((out / record.mask).read_bytes()).hexdigest()
        )
        assert record.extra["image_source"] == ("embedded" if index % 4 == 3 else "file")
        assert record.extra["question"] == "Please segment the blood vessels."
        assert record.extra["answer"] == "Sure, [SEG]." and record.phrase == "blood vessels"
        sample = make_sample(11, index, size, size)
        if size == 512:
            assert ((mask > 0) == sample.mask).all()
        else:
            # Rasterised from scaled geometry, not resampled: close to, not equal to, resampling.
            assert dice(mask > 0, resample_mask(sample.mask, 512, 512)) > 0.9


def test_report_echoes_settings_and_counts(prepared):
    out, _ = prepared
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["raster"]["line_width_px"] == 10.0
    assert report["original_sizes"] == {"512x512": 6, "800x800": 6}
    assert report["image_sources"] == {"embedded": 3, "file": 9}
    assert report["label_counts"]["hole"] > 0 and report["shape_counts"]["polygon"] > 0
    assert sum(report["counts"].values()) == 12


def test_splits_keep_patients_together(prepared):
    out, _ = prepared
    by_patient: dict[str, set[str]] = {}
    for record in read_manifest(out):
        by_patient.setdefault(record.extra["group"], set()).add(record.split)
    assert len(by_patient) == 4 and all(len(s) == 1 for s in by_patient.values())
    stored = json.loads((out / "splits.json").read_text())
    assert stored["settings"]["group_pattern"] == GROUPS


@pytest.mark.parametrize("masks", ["rle", "polygons"])
def test_sa2va_annotations_decode_back_to_the_masks(prepared, prepared_polygons, masks):
    out = prepared[0] if masks == "rle" else prepared_polygons
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["sa2va"]["masks"] == masks
    records = {r.id: r for r in read_manifest(out)}
    seen = 0
    for split in ("train", "val", "test"):
        entries = json.loads((out / "sa2va" / split / "annotations.json").read_text())
        for entry in entries:
            item_id = entry["image"].removesuffix(".png")
            assert records[item_id].split == split
            assert (out / "images" / entry["image"]).is_file()
            assert entry["text"] == ["blood vessels"] and len(entry["mask"]) == 1
            segments = entry["mask"][0]
            assert all(isinstance(s, dict) == (masks == "rle") for s in segments)
            back = np.zeros((512, 512), bool)
            for segment in segments:
                back |= decode_segment(segment, 512, 512)
            truth = read_image(out / records[item_id].mask) > 0
            assert (back == truth).all()
            seen += 1
    assert seen == 12


def test_inputs_untouched_and_rerun_byte_identical(labelme_dir, prepared, tmp_path):
    out, _ = prepared
    before = tree_hashes(labelme_dir)
    first = tree_hashes(out, skip=("run_info.json",))
    prepare.run(settings(labelme_dir, out, overwrite=True, split={"group_pattern": GROUPS}))
    assert tree_hashes(out, skip=("run_info.json",)) == first
    assert tree_hashes(labelme_dir) == before
    # Into another folder with two worker processes: same data files.
    other = tmp_path / "other"
    prepare.run(settings(labelme_dir, other, workers=2, split={"group_pattern": GROUPS}))
    skip = ("run_info.json", "settings.yaml")
    assert tree_hashes(other, skip=skip) == tree_hashes(out, skip=skip)


def test_loopy_vessel_mask_round_trips_through_labelme_with_holes(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    originals = {}
    for index, size in enumerate((512, 512, 800)):
        mask = draw_vessel_mask(21, index, size, size)
        originals[f"loop{index}"] = mask
        shapes = mask_to_labelme_shapes(mask)
        assert any(s["label"] == "hole" for s in shapes)
        image = make_sample(21, index, size, size).image
        from vesselctl.data.images import encode_png

        (src / f"loop{index}.png").write_bytes(encode_png(image))
        doc = labelme_document(shapes, f"loop{index}.png", size, size, None)
        (src / f"loop{index}.json").write_text(json.dumps(doc))
    out = tmp_path / "out"
    prepare.run(settings(src, out, split={"val": 0, "test": 0}))
    for record in read_manifest(out):
        got = read_image(out / record.mask) > 0
        original = originals[record.id]
        if original.shape == (512, 512):
            assert dice(got, original) >= 0.99
        # Holes matter: outer outlines alone would fill every loop.
        no_holes = [s for s in mask_to_labelme_shapes(original) if s["label"] != "hole"]
        assert len(no_holes) < len(mask_to_labelme_shapes(original))


def test_hostile_image_path_cannot_escape(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    write_labelme_dataset(src, 2, seed=1, sizes=(64,), embed_every=0)
    (tmp_path / "outside.png").write_bytes((src / "P000_img0000.png").read_bytes())
    evil = json.loads((src / "P001_img0001.json").read_text())
    evil["imagePath"] = "../outside.png"
    (src / "P001_img0001.json").write_text(json.dumps(evil))
    (src / "P001_img0001.png").unlink()
    evil2 = dict(evil, imagePath="../../../../../../etc/passwd")
    (src / "sub").mkdir()
    (src / "sub" / "evil.json").write_text(json.dumps(evil2))
    before = tree_hashes(tmp_path)
    with pytest.raises(DatasetError) as info:
        prepare.run(settings(src, out))
    message = str(info.value)
    assert "2 of 3 file(s)" in message
    assert "P001_img0001.json" in message and "sub/evil.json" in message
    assert "resolves outside the dataset folder" in message
    after = tree_hashes(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("out/")} == before
    assert not (out / "manifest.jsonl").exists() and not (out / "images").exists()
    # Skipping leaves the bad files out and lists them.
    result = prepare.run(settings(src, out, on_bad_file="skip", split={"val": 0, "test": 0}))
    assert result.prepared == 1 and sorted(result.skipped) == ["P001_img0001.json", "sub/evil.json"]
    report = json.loads((out / "prepare_report.json").read_text())
    assert [s["source"] for s in report["skipped"]] == ["P001_img0001.json", "sub/evil.json"]


def test_input_without_json_or_images_is_refused_before_output_is_made(tmp_path):
    src = tmp_path / "empty"
    src.mkdir()
    (src / "notes.txt").write_text("not data")
    with pytest.raises(DatasetError, match=r"no LabelMe JSON files and no images"):
        prepare.run(settings(src, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_refuses_non_empty_output_and_foreign_files(labelme_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"not empty.*--overwrite"):
        prepare.run(settings(labelme_dir, out))
    with pytest.raises(ConfigError, match=r"did not write.*notes.txt"):
        prepare.run(settings(labelme_dir, out, overwrite=True))
    assert (out / "notes.txt").read_text() == "mine"
    with pytest.raises(ConfigError, match=r"overlap"):
        prepare.run(settings(labelme_dir, labelme_dir / "out"))


def test_bad_files_are_all_listed(tmp_path):
    src = tmp_path / "src"
    write_labelme_dataset(src, 3, seed=2, sizes=(64,), embed_every=0)
    doc = json.loads((src / "P000_img0000.json").read_text())
    doc["shapes"][0]["label"] = "artery"
    (src / "P000_img0000.json").write_text(json.dumps(doc))
    doc = json.loads((src / "P001_img0001.json").read_text())
    doc["imageWidth"] = 80
    (src / "P001_img0001.json").write_text(json.dumps(doc))
    (src / "P002_img0002.json").write_text('{"shapes": [')
    with pytest.raises(DatasetError) as info:
        prepare.run(settings(src, tmp_path / "out"))
    message = str(info.value)
    assert "3 of 3 file(s)" in message
    assert "P000_img0000.json: label(s) 'artery' are not in the label map" in message
    assert "P001_img0001.json: imageHeight x imageWidth say 64x80 but the image is 64x64" in message
    assert "P002_img0002.json: (file): invalid JSON" in message
    # Mapping the label fixes the first file.
    result = prepare.run(
        settings(
            src,
            tmp_path / "out2",
            on_bad_file="skip",
            labels={"ignore": ["artery"]},
            split={"val": 0, "test": 0},
        )
    )
    assert result.prepared == 1


def test_split_reused_on_rerun_with_new_files(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    write_labelme_dataset(src, 10, seed=4, sizes=(64,), embed_every=0, patients=5)
    split = {"group_pattern": GROUPS, "val": 0.2, "test": 0.2}
    prepare.run(settings(src, out, split=split))
    first = {r.id: r.split for r in read_manifest(out)}
    write_labelme_dataset(src, 2, seed=4, sizes=(64,), embed_every=0, patients=5, start_index=10)
    (src / "P000_img0000.json").unlink()
    (src / "P000_img0000.png").unlink()
    result = prepare.run(settings(src, out, overwrite=True, split=split))
    second = {r.id: r.split for r in read_manifest(out)}
    assert all(second[i] == s for i, s in first.items() if i in second)
    assert second["P000_img0010"] == first["P000_img0005"]  # same patient, same split
    assert result.split_history["removed_since_previous"] == ["P000_img0000"]
    assert result.split_history["reused"] == 9
    run_info = json.loads((out / "run_info.json").read_text())
    assert run_info["split_history"]["added"] == ["P000_img0010", "P001_img0011"]
    # A failed re-run keeps splits.json, so the next good run still reuses the split.
    good_doc = (src / "P001_img0001.json").read_text()
    (src / "P001_img0001.json").write_text("{")
    with pytest.raises(DatasetError):
        prepare.run(settings(src, out, overwrite=True, split=split))
    assert (out / "splits.json").is_file() and not (out / "manifest.jsonl").exists()
    (src / "P001_img0001.json").write_text(good_doc)
    result = prepare.run(settings(src, out, overwrite=True, split=split))
    assert {r.id: r.split for r in read_manifest(out)} == second
    assert result.split_source.endswith("splits.json")
    # Other split settings: a fresh split, said so.
    result = prepare.run(settings(src, out, overwrite=True, split={**split, "seed": 9}))
    assert "other split settings" in result.split_source


def test_image_and_mask_folder_input(tmp_path):
    src = tmp_path / "src"
    write_mask_folder_dataset(src, 3, seed=5, sizes=(64,))
    result = prepare.run(settings(src, tmp_path / "out", resize={"height": 32, "width": 32}))
    assert result.input_format == "mask_folder" and result.prepared == 3
    for record in read_manifest(tmp_path / "out"):
        index = int(record.id.rsplit("img", 1)[1])
        mask = read_image(tmp_path / "out" / record.mask) > 0
        assert mask.shape == (32, 32)
        assert (mask == resample_mask(make_sample(5, index, 64, 64).mask, 32, 32)).all()


def test_non_binary_mask_is_rejected(tmp_path):
    src = tmp_path / "src"
    pairs = write_mask_folder_dataset(src, 1, seed=5, sizes=(16,))
    from vesselctl.data.images import encode_png

    pairs[0][1].write_bytes(encode_png(np.arange(256, dtype=np.uint8).reshape(16, 16)))
    with pytest.raises(DatasetError, match=r"expected a binary mask"):
        prepare.run(settings(src, tmp_path / "out"))


def test_keeps_original_size_when_resize_is_off(tmp_path):
    src = tmp_path / "src"
    write_labelme_dataset(src, 2, seed=8, sizes=(40, 56), embed_every=0)
    out = tmp_path / "out"
    prepare.run(
        settings(src, out, resize={"height": None, "width": None}, split={"val": 0, "test": 0})
    )
    sizes = sorted((r.height, r.width) for r in read_manifest(out))
    assert sizes == [(40, 40), (56, 56)]
    shutil.rmtree(out)


def test_group_pattern_must_match_every_file_name(tmp_path):
    src = tmp_path / "src"
    write_labelme_dataset(src, 2, seed=1, sizes=(32,), embed_every=0)
    (src / "P001_img0001.json").rename(src / "scan7.json")
    with pytest.raises(DatasetError, match=r"1 file name\(s\) do not match.*scan7.json"):
        prepare.run(settings(src, tmp_path / "out", split={"group_pattern": GROUPS}))
    assert not (tmp_path / "out").exists()


def test_progress_bar_and_phase_timings(tmp_path, capsys):
    src = tmp_path / "src"
    write_labelme_dataset(src, 3, seed=3, sizes=(32,), embed_every=0)
    prepare.run(settings(src, tmp_path / "out", progress=True, split={"val": 0, "test": 0}))
    assert "3/3" in capsys.readouterr().out
    run_info = json.loads((tmp_path / "out" / "run_info.json").read_text())
    assert set(run_info["timings_s"]) == {"discover_s", "process_s", "describe_s", "sync_s"}


def test_exif_rotated_jpeg_lines_up_with_its_annotation(tmp_path):
    from PIL import Image

    src = tmp_path / "src"
    src.mkdir()
    # Stored 40 wide x 20 high, shown (EXIF orientation 6) 20 wide x 40 high; dark top band.
    shown = np.full((40, 20), 220, np.uint8)
    shown[:10] = 20
    stored = Image.fromarray(np.rot90(shown, k=1))  # undo a 90-degree clockwise display turn
    exif = stored.getexif()
    exif[0x0112] = 6
    stored.save(src / "rot.jpg", "JPEG", exif=exif.tobytes(), quality=95)
    shapes = [{"label": "vessel", "points": [[0, 0], [20, 10]], "shape_type": "rectangle"}]
    doc = labelme_document(shapes, "rot.jpg", 40, 20, None)
    (src / "rot.json").write_text(json.dumps(doc))
    out = tmp_path / "out"
    prepare.run(
        settings(src, out, resize={"height": None, "width": None}, split={"val": 0, "test": 0})
    )
    record = read_manifest(out)[0]
    image, mask = read_image(out / record.image), read_image(out / record.mask) > 0
    assert image.shape == mask.shape == (40, 20)
    assert mask[:10].all() and not mask[10:].any()
    assert image[:10].mean() < 60 and image[12:].mean() > 180


@pytest.mark.parametrize("masks", ["rle", "polygons"])
def test_sa2va_masks_decode_exactly_with_pycocotools(prepared, prepared_polygons, masks):
    """The official Sa2VA loader decodes each segment with pycocotools: check it where present.

    As the official ``Sa2VAFinetuneDataset`` does: ``frPyObjects([segment], h, w)`` per
    segment, decoded and added up. pycocotools is not a vesselctl dependency, so this runs only
    where it is installed (the training machine); verified with pycocotools 2.0.11.
    """
    mask_utils = pytest.importorskip("pycocotools.mask")
    out = prepared[0] if masks == "rle" else prepared_polygons
    records = {r.id: r for r in read_manifest(out)}
    checked = 0
    for split in ("train", "val", "test"):
        for entry in json.loads((out / "sa2va" / split / "annotations.json").read_text()):
            truth = read_image(out / records[entry["image"].removesuffix(".png")].mask) > 0
            height, width = truth.shape
            decoded = np.zeros((height, width), np.uint8)
            for segment in entry["mask"][0]:
                rles = mask_utils.frPyObjects([segment], height, width)
                decoded += mask_utils.decode(rles).astype(np.uint8).squeeze()
            assert (decoded == truth).all()  # 0/1 only: segments never overlap
            checked += 1
    assert checked == 12


def _rewrite_images_with_pillow(src: Path, **save_kwargs) -> dict[str, bytes]:
    """Re-save every PNG next to the JSON files with Pillow: same pixels, other bytes."""
    written = {}
    for path in sorted(src.glob("*.png")):
        buffer = io.BytesIO()
        Image.fromarray(read_image(path)).save(buffer, "PNG", **save_kwargs)
        path.write_bytes(buffer.getvalue())
        written[path.stem] = buffer.getvalue()
    return written


def test_plain_png_at_the_output_size_is_copied_with_the_decode_paths_pixels(tmp_path):
    src = tmp_path / "src"
    write_labelme_dataset(src, 3, seed=6, sizes=(64,), embed_every=0)
    sources = _rewrite_images_with_pillow(src)
    size = {"height": 64, "width": 64}
    copied, encoded = tmp_path / "copied", tmp_path / "encoded"
    prepare.run(settings(src, copied, resize=size))
    prepare.run(settings(src, encoded, resize={**size, "png": "small"}))  # always re-encodes
    for record in read_manifest(copied):
        data = (copied / record.image).read_bytes()
        assert data == sources[record.id]  # the source file's own bytes
        assert record.extra["sha256_image"] == hashlib.sha256(data).hexdigest()
        assert record.extra["channels"] == 1 and record.extra["orig_dtype"] == "uint8"
        other = (encoded / record.image).read_bytes()
        assert other != data
        assert (read_image(copied / record.image) == read_image(encoded / record.image)).all()
        assert (read_image(copied / record.mask) == read_image(encoded / record.mask)).all()


def test_png_with_metadata_or_another_size_is_re_encoded(tmp_path):
    src = tmp_path / "src"
    write_labelme_dataset(src, 2, seed=6, sizes=(64,), embed_every=0)
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "patient name")
    sources = _rewrite_images_with_pillow(src, pnginfo=text)
    for out, size in ((tmp_path / "same", 64), (tmp_path / "smaller", 32)):
        prepare.run(settings(src, out, resize={"height": size, "width": size}))
        for record in read_manifest(out):
            data = (out / record.image).read_bytes()
            assert data != sources[record.id] and b"patient name" not in data
            assert read_image(out / record.image).shape == (size, size)


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "no IEND"])
def test_damaged_png_is_still_reported(tmp_path, damage):
    src = tmp_path / "src"
    write_labelme_dataset(src, 2, seed=6, sizes=(64,), embed_every=0)
    path = src / "P001_img0001.png"
    data = bytearray(path.read_bytes())
    if damage == "flipped byte":
        data[len(data) // 2] ^= 0x01
    damaged = {"flipped byte": bytes(data), "truncated": data[: len(data) // 2]}.get(
        damage, bytes(data[:-12])
    )
    path.write_bytes(damaged)
    with pytest.raises(DatasetError, match=r"(?s)1 of 2 file.*P001_img0001.json: cannot decode"):
        prepare.run(settings(src, tmp_path / "out", resize={"height": 64, "width": 64}))
    assert path.read_bytes() == damaged  # inputs never modified
