"""prepare: CVAT exports -> TFRecords. Both formats, frame selection, split, and the edge rules."""
# ruff: noqa: E501  (a CVAT XML document inside)

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from airflow_cvat.manifest import Manifest  # noqa: E402
from airflow_cvat.trainer.prepare import DatasetError, prepare  # noqa: E402
from demo_data.datasets import make_dataset  # noqa: E402
from demo_data.synthetic import generate_frames  # noqa: E402

FEATURES = {
    "image/encoded": tf.io.FixedLenFeature((), tf.string),
    "image/source_id": tf.io.FixedLenFeature((), tf.string),
    "image/filename": tf.io.FixedLenFeature((), tf.string),
    "image/height": tf.io.FixedLenFeature((), tf.int64),
    "image/width": tf.io.FixedLenFeature((), tf.int64),
    "image/object/bbox/xmin": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/ymin": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/xmax": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/ymax": tf.io.VarLenFeature(tf.float32),
    "image/object/class/label": tf.io.VarLenFeature(tf.int64),
    "image/object/mask": tf.io.VarLenFeature(tf.string),
}


def read_examples(folder: Path, split: str) -> dict[str, dict]:
    """filename -> decoded features, for every record of a split."""
    files = sorted(str(p) for p in folder.glob(f"{split}-*.tfrecord"))
    out = {}
    for raw in tf.data.TFRecordDataset(files):
        parsed = tf.io.parse_single_example(raw, FEATURES)
        dense = {
            k: (tf.sparse.to_dense(v) if isinstance(v, tf.SparseTensor) else v) for k, v in parsed.items()
        }
        record = {k: v.numpy() for k, v in dense.items()}
        out[record["image/filename"].decode()] = record
    return out


def boxes_of(record: dict) -> np.ndarray:
    keys = ("xmin", "ymin", "xmax", "ymax")
    return np.stack([record[f"image/object/bbox/{k}"] for k in keys], axis=-1)


@pytest.mark.parametrize("format", ["COCO 1.0", "CVAT for images 1.1"])
def test_both_formats_give_the_generated_answer(tmp_path, format):
    make_dataset(tmp_path / "ds", 20, format=format, size=96)
    report = prepare(str(tmp_path / "ds"), tmp_path / "data", validation_fraction=0.25)
    assert (report.train_images, report.validation_images) == (15, 5)
    assert [(e["id"], e["name"]) for e in report.labels] == [(1, "circle"), (2, "square"), (3, "triangle")]
    examples = {**read_examples(tmp_path / "data", "train"), **read_examples(tmp_path / "data", "val")}
    ids = {"circle": 1, "square": 2, "triangle": 3}
    zf = zipfile.ZipFile(next((tmp_path / "ds" / "archives").glob("*.zip")))
    for frame in generate_frames(20, width=96, height=96):
        record = examples[frame.name]
        expected = np.array([[v / 96 for v in shape.bbox()] for shape in frame.shapes]).reshape(-1, 4)
        np.testing.assert_allclose(boxes_of(record), expected, atol=1e-3)
        assert list(record["image/object/class/label"]) == [ids[s.label] for s in frame.shapes]
        assert record["image/source_id"].decode().isdigit()
        assert record["image/encoded"] == frame.jpeg  # bytes pass through, no re-encoding
        assert frame.jpeg in {zf.read(n) for n in zf.namelist() if n.endswith(frame.name)}
    stored = json.loads((tmp_path / "data" / "prepare.json").read_text())
    assert stored["train_images"] == 15 and (tmp_path / "data" / "label_map.json").exists()


def test_only_manifest_frames_count_and_split_is_deterministic(tmp_path):
    make_dataset(tmp_path / "ds", 30, archives=2)
    manifest_path = tmp_path / "ds" / "manifest.json"
    manifest = Manifest.from_json(manifest_path.read_text())
    manifest.archives[0].frame_names = manifest.archives[0].frame_names[:5]
    manifest_path.write_text(manifest.to_json())
    first = prepare(str(tmp_path / "ds"), tmp_path / "a", validation_fraction=0.1)
    # The export task returns the manifest's URI: it names the same dataset as its folder.
    prepare(manifest_path.as_uri(), tmp_path / "b", validation_fraction=0.1)
    assert first.train_images + first.validation_images == 5 + 15
    assert first.validation_images == 2
    assert read_examples(tmp_path / "a", "val").keys() == read_examples(tmp_path / "b", "val").keys()


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5])
def test_empty_split_requests_are_refused(tmp_path, fraction):
    make_dataset(tmp_path / "ds", 4)
    with pytest.raises(DatasetError, match="between 0 and 1"):
        prepare(str(tmp_path / "ds"), tmp_path / "data", validation_fraction=fraction)


def test_tiny_fraction_still_validates_on_one_image(tmp_path):
    make_dataset(tmp_path / "ds", 3)
    report = prepare(str(tmp_path / "ds"), tmp_path / "data", validation_fraction=0.01)
    assert (report.train_images, report.validation_images) == (2, 1)


def test_one_image_is_not_enough(tmp_path):
    make_dataset(tmp_path / "ds", 1)
    with pytest.raises(DatasetError, match="at least 2"):
        prepare(str(tmp_path / "ds"), tmp_path / "data")


def test_missing_manifest(tmp_path):
    with pytest.raises(DatasetError, match="no manifest.json"):
        prepare(str(tmp_path / "nothing"), tmp_path / "data")


def _rewrite_zip(path: Path, replace: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members.update(replace)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def _fix_manifest_hash(folder: Path) -> None:
    import hashlib

    manifest = Manifest.from_json((folder / "manifest.json").read_text())
    for archive in manifest.archives:
        data = (folder / archive.path).read_bytes()
        archive.sha256, archive.size = hashlib.sha256(data).hexdigest(), len(data)
    (folder / "manifest.json").write_text(manifest.to_json())


def test_corrupt_image_is_skipped_and_listed(tmp_path):
    make_dataset(tmp_path / "ds", 6)
    archive = next((tmp_path / "ds" / "archives").glob("*.zip"))
    _rewrite_zip(archive, {"images/default/frame_000002.jpg": b"\xff\xd8\xff not really a jpeg"})
    _fix_manifest_hash(tmp_path / "ds")
    with pytest.raises(DatasetError, match=r"dropped 1 of 6 images \(17%\).*max_dropped_images=0.05"):
        prepare(str(tmp_path / "ds"), tmp_path / "data", validation_fraction=0.2)
    assert not (tmp_path / "data" / "prepare.json").exists() and not list(
        (tmp_path / "data").glob("*.tfrecord")
    )
    report = prepare(str(tmp_path / "ds"), tmp_path / "data", validation_fraction=0.2, max_dropped_images=0.2)
    assert report.train_images + report.validation_images == 5
    assert [s["image"].endswith("frame_000002.jpg") for s in report.skipped_images] == [True]
    assert report.dropped_images == {"cannot_decode": 1} and report.images_selected == 6


def test_tampered_archive_is_refused(tmp_path):
    make_dataset(tmp_path / "ds", 4)
    archive = next((tmp_path / "ds" / "archives").glob("*.zip"))
    _rewrite_zip(archive, {"extra.txt": b"x"})
    with pytest.raises(DatasetError, match="sha256"):
        prepare(str(tmp_path / "ds"), tmp_path / "data")


EDGE_XML = """<?xml version="1.0" encoding="utf-8"?>
<annotations><version>1.1</version>
<image id="0" name="a.jpg" width="100" height="80">
  <box label="square" source="manual" occluded="0" xtl="-10" ytl="-10" xbr="20" ybr="30" z_order="0"/>
  <box label="square" source="manual" occluded="0" xtl="50" ytl="40" xbr="50" ybr="60" z_order="0"/>
  <box label="square" source="manual" occluded="0" xtl="200" ytl="10" xbr="230" ybr="30" z_order="0"/>
  <box label="circle" source="manual" occluded="0" xtl="40" ytl="30" xbr="60" ybr="50" rotation="45" z_order="0"/>
  <polyline label="circle" source="manual" occluded="0" points="1,1;5,5" z_order="0"/>
  <polygon label="triangle" source="manual" occluded="0" points="70,70;90,70;80,50" z_order="0"/>
  <box label="unknown" source="manual" occluded="0" xtl="1" ytl="1" xbr="9" ybr="9" z_order="0"/>
</image>
<image id="1" name="b.jpg" width="100" height="80"></image>
<image id="2" name="c.jpg" width="100" height="80">
  <box label="circle" source="manual" occluded="0" xtl="10" ytl="10" xbr="30" ybr="30" z_order="0"/>
</image>
</annotations>"""


def _jpeg(width=100, height=80) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (120, 120, 120)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _edge_dataset(folder: Path) -> None:
    make_dataset(folder, 2, format="CVAT for images 1.1", frame_names=False)
    archive = next((folder / "archives").glob("*.zip"))
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("annotations.xml", EDGE_XML)
        for name in ("a.jpg", "b.jpg", "c.jpg"):
            zf.writestr(f"images/{name}", _jpeg())
    _fix_manifest_hash(folder)


def test_edge_rules(tmp_path):
    _edge_dataset(tmp_path / "ds")
    # keep_empty_labels: whichever image validates, all three labels stay classes (ids 1-3)
    report = prepare(
        str(tmp_path / "ds"),
        tmp_path / "data",
        validation_fraction=0.3,
        with_masks=True,
        keep_empty_labels=True,
    )
    examples = {**read_examples(tmp_path / "data", "train"), **read_examples(tmp_path / "data", "val")}
    assert set(examples) == {"a.jpg", "b.jpg", "c.jpg"}  # the image without shapes is kept
    assert len(examples["b.jpg"]["image/object/class/label"]) == 0
    a = examples["a.jpg"]
    assert list(a["image/object/class/label"]) == [2, 1, 3]  # clipped box, rotated box, polygon
    boxes = boxes_of(a) * np.array([100, 80, 100, 80])
    np.testing.assert_allclose(boxes[0], [0, 0, 20, 30], atol=1e-3)  # clipped to the image
    half = 10 * 2**0.5
    np.testing.assert_allclose(boxes[1], [50 - half, 40 - half, 50 + half, 40 + half], atol=1e-3)
    np.testing.assert_allclose(boxes[2], [70, 50, 90, 70], atol=1e-3)
    assert report.dropped_shapes == {
        "degenerate_box": 1,
        "outside_image": 1,
        "unsupported_polyline": 1,
        "unknown_label": 1,
    }
    assert report.clipped_shapes == 1 and report.dropped_images == {}
    masks = [tf.io.decode_png(m).numpy()[..., 0] for m in a["image/object/mask"]]
    assert len(masks) == 3 and all(m.shape == (80, 100) for m in masks)
    assert masks[1][40, 50] == 1 and masks[1][31, 41] == 0  # rotated square: centre in, corner out
    assert masks[2][65, 80] == 1 and masks[2][52, 71] == 0  # triangle


def test_cli_prepare_reports_bad_input_with_exit_2(tmp_path):
    make_dataset(tmp_path / "ds", 4)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "airflow_cvat.trainer",
            "prepare",
            "--dataset",
            str(tmp_path / "ds"),
            "--output",
            str(tmp_path / "run"),
            "--validation-fraction",
            "0",
        ],
        capture_output=True,
        text=True,
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 2 and result["status"] == "error" and "between 0 and 1" in result["error"]
