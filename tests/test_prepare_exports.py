"""prepare on real-shaped CVAT exports: subsets decide the split, and nothing is dropped silently.

The zips are built here in exactly CVAT's layouts (see tests/cvat_recorded and CVAT's
``cvat/apps/dataset_manager/formats``): a *project* export holds ``images/<subset>/<name>``
and, in "CVAT for images 1.1", ``<image ... subset="Train" task_id="...">`` under a
``<meta><project>`` with ``<subsets>``; in "COCO 1.0", one ``annotations/instances_<subset>.json``
per subset. A *task* export holds ``images/<name>`` and its meta's ``<task><subset>``.
CVAT's own recorded exports (tests/cvat_recorded) go through prepare too.
"""
# ruff: noqa: E501  (CVAT XML documents inside)

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest

tf = pytest.importorskip("tensorflow")

from airflow_cvat.export_archive import read_labels_and_images  # noqa: E402
from airflow_cvat.manifest import MANIFEST_NAME, Archive, Label, Manifest, fingerprint  # noqa: E402
from airflow_cvat.trainer.prepare import DatasetError, prepare, summary_line  # noqa: E402
from demo_data.synthetic import coco_document  # noqa: E402
from tests.trainer_helpers import run_trainer  # noqa: E402

RECORDED = Path(__file__).parent / "cvat_recorded"
SUBSET_COLOURS = {"Train": (200, 30, 30), "Validation": (30, 200, 30), "Test": (30, 30, 200)}


def _jpeg(colour: tuple[int, int, int], width: int = 64, height: int = 48) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _dataset(folder: Path, zip_members: dict[str, bytes], labels: list[tuple[str, str]]) -> Path:
    """A dataset folder as the export operator writes it for an imported zip (every frame counts)."""
    archive_path = folder / "archives" / "export.zip"
    archive_path.parent.mkdir(parents=True)
    with zipfile.ZipFile(archive_path, "w") as zf:
        for name, data in zip_members.items():
            zf.writestr(name, data)
    with zipfile.ZipFile(archive_path) as zf:
        fmt = "CVAT for images 1.1" if "annotations.xml" in zip_members else "COCO 1.0"
        _, images = read_labels_and_images(zf)
    data = archive_path.read_bytes()
    archive = Archive(
        "archives/export.zip",
        fmt,
        len(data),
        hashlib.sha256(data).hexdigest(),
        frame_names=[i.name for i in images],
    )
    manifest = Manifest(
        source={"kind": "storage", "uri": "s3://bucket/export.zip"},
        format=fmt,
        archives=[archive],
        labels=[Label(id=i, name=name, type=kind) for i, (name, kind) in enumerate(labels, start=1)],
        label_counts={},
        images=len(images),
        fingerprint=fingerprint({"zip": hashlib.sha256(data).hexdigest()}),
    )
    (folder / MANIFEST_NAME).write_text(manifest.to_json())
    return folder


def _records(folder: Path, prefix: str) -> list[dict]:
    """(file name, encoded bytes, class ids) of every record of one split."""
    out = []
    for raw in tf.data.TFRecordDataset(sorted(str(p) for p in folder.glob(f"{prefix}-*.tfrecord"))):
        example = tf.train.Example.FromString(raw.numpy()).features.feature
        out.append(
            {
                "name": example["image/filename"].bytes_list.value[0].decode(),
                "encoded": example["image/encoded"].bytes_list.value[0],
                "classes": list(example["image/object/class/label"].int64_list.value),
                "boxes": [
                    list(box)
                    for box in zip(
                        *(
                            example[f"image/object/bbox/{k}"].float_list.value
                            for k in ("xmin", "ymin", "xmax", "ymax")
                        ),
                        strict=True,
                    )
                ],
            }
        )
    return out


# -- a project export with three subsets and repeated file names ---------------------------------

PROJECT_COUNTS = {"Train": 8, "Validation": 3, "Test": 2}


def _project_xml() -> str:
    images, index = [], 0
    for subset, count in PROJECT_COUNTS.items():
        for i in range(count):  # img_00.jpg... in every subset: same names, different images
            images.append(
                f'  <image id="{index}" name="img_{i:02d}.jpg" subset="{subset}" task_id="{list(PROJECT_COUNTS).index(subset) + 1}" width="64" height="48">\n'
                f'    <box label="car" source="manual" occluded="0" xtl="{4 + i}" ytl="5" xbr="{30 + i}" ybr="40" z_order="0">\n    </box>\n'
                + (
                    '    <polygon label="person" source="manual" occluded="0" points="40.00,5.00;60.00,5.00;50.00,30.00" z_order="0">\n    </polygon>\n'
                    if i % 2 == 0
                    else ""
                )
                + "  </image>"
            )
            index += 1
    tasks = "".join(
        f"""        <task>
          <id>{n}</id>
          <name>{subset.lower()}</name>
          <size>{PROJECT_COUNTS[subset]}</size>
          <mode>annotation</mode>
          <overlap>0</overlap>
          <bugtracker></bugtracker>
          <created>2026-11-25 06:38:22.422950+00:00</created>
          <updated>2026-11-25 06:38:30.110955+00:00</updated>
          <subset>{subset}</subset>
          <start_frame>0</start_frame>
          <stop_frame>{PROJECT_COUNTS[subset] - 1}</stop_frame>
          <frame_filter></frame_filter>
        </task>
"""
        for n, subset in enumerate(PROJECT_COUNTS, start=1)
    )
    return f"""<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta>
    <project>
      <id>3</id>
      <name>streets</name>
      <bugtracker></bugtracker>
      <created>2026-11-25 06:38:22.422950+00:00</created>
      <updated>2026-11-25 06:38:30.110955+00:00</updated>
      <tasks>
{tasks}      </tasks>
      <subsets>Train
Validation
Test</subsets>
      <labels>
        <label>
          <name>car</name>
          <color>#ff0000</color>
          <type>any</type>
          <attributes>
          </attributes>
        </label>
        <label>
          <name>person</name>
          <color>#00ff00</color>
          <type>any</type>
          <attributes>
          </attributes>
        </label>
      </labels>
    </project>
    <dumped>2026-11-25 06:38:35.236697+00:00</dumped>
  </meta>
{chr(10).join(images)}
</annotations>
"""


def _project_coco() -> dict[str, bytes]:
    members = {}
    for subset, count in PROJECT_COUNTS.items():
        images, annotations = [], []
        for i in range(count):
            images.append(
                {
                    "id": i + 1,
                    "width": 64,
                    "height": 48,
                    "file_name": f"img_{i:02d}.jpg",
                    "license": 0,
                    "flickr_url": "",
                    "coco_url": "",
                    "date_captured": 0,
                }
            )
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": 1,
                    "segmentation": [],
                    "area": 26.0 * 35,
                    "bbox": [4.0 + i, 5.0, 26.0, 35.0],
                    "iscrowd": 0,
                    "attributes": {"occluded": False, "rotation": 0.0},
                }
            )
        members[f"annotations/instances_{subset}.json"] = coco_document(
            {"car": 1, "person": 2}, images, annotations
        )
    return members


def _project_images() -> dict[str, bytes]:
    return {
        f"images/{subset}/img_{i:02d}.jpg": _jpeg(SUBSET_COLOURS[subset])
        for subset, count in PROJECT_COUNTS.items()
        for i in range(count)
    }


@pytest.mark.parametrize("format", ["CVAT for images 1.1", "COCO 1.0"])
def test_project_export_subsets_decide_the_split(tmp_path, format):
    annotations = (
        {"annotations.xml": _project_xml().encode()} if format.startswith("CVAT") else _project_coco()
    )
    # CVAT writes the images first, the annotation file last
    folder = _dataset(
        tmp_path / "ds", {**_project_images(), **annotations}, [("car", "any"), ("person", "any")]
    )
    report = prepare(str(folder), tmp_path / "data", validation_fraction=0.5)
    print(format, "->", summary_line(report.to_dict()))

    assert report.split["mode"] == "subsets"
    assert report.split["description"] == "subsets: Train 8 / Validation 3 / Test 2"
    assert (report.train_images, report.validation_images, report.test_images) == (8, 3, 2)
    assert report.dropped_images == {} and report.dropped_shapes == {}
    # same names in three subsets stay three images, each in its subset's split, with its own pixels
    for prefix, subset in (("train", "Train"), ("val", "Validation"), ("test", "Test")):
        records = _records(tmp_path / "data", prefix)
        assert sorted(r["name"] for r in records) == [
            f"img_{i:02d}.jpg" for i in range(PROJECT_COUNTS[subset])
        ]
        with zipfile.ZipFile(folder / "archives" / "export.zip") as zf:
            assert all(r["encoded"] == zf.read(f"images/{subset}/{r['name']}") for r in records)
    if format == "COCO 1.0":  # person has no shape in the COCO variant: not a class
        assert [e["name"] for e in report.labels] == ["car"]
        assert report.labels_left_out == [{"name": "person", "cvat_id": 2, "reason": "no shapes"}]
    else:
        assert [e["name"] for e in report.labels] == ["car", "person"] and report.labels_left_out == []
    stored = json.loads((tmp_path / "data" / "prepare.json").read_text())
    assert stored["split"]["subsets"]["Test"] == {"role": "test", "images": 2}


def test_task_export_subset_without_validation_draws_it_from_train(tmp_path):
    """A task export says its subset in the meta only; Train alone: validation drawn from it."""
    xml = (RECORDED / "export_cvat_images_with_images.zip").read_bytes()
    with zipfile.ZipFile(io.BytesIO(xml)) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members["annotations.xml"] = members["annotations.xml"].replace(
        b"<subset>default</subset>", b"<subset>Train</subset>"
    )
    folder = _dataset(tmp_path / "ds", members, [("car", "any"), ("person", "any")])
    report = prepare(str(folder), tmp_path / "data", validation_fraction=0.2)
    print(summary_line(report.to_dict()))
    assert report.split["mode"] == "subsets"
    assert report.split["description"].startswith(
        "subsets: Train 10; validation: 2 drawn at random from training"
    )
    assert (report.train_images, report.validation_images, report.test_images) == (8, 2, 0)


# -- an XML naming missing images ------------------------------------------------------------------


def _missing_images_export() -> dict[str, bytes]:
    images = "\n".join(
        f'  <image id="{i}" name="street_{i:02d}.jpg" width="64" height="48">\n'
        f'    <box label="car" source="manual" occluded="0" xtl="10.00" ytl="10.00" xbr="40.00" ybr="30.00" z_order="0">\n    </box>\n'
        "  </image>"
        for i in range(20)
    )
    xml = f"""<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta>
    <task>
      <id>7</id>
      <name>streets</name>
      <size>20</size>
      <mode>annotation</mode>
      <overlap>0</overlap>
      <subset>default</subset>
      <start_frame>0</start_frame>
      <stop_frame>19</stop_frame>
      <frame_filter></frame_filter>
      <labels>
        <label>
          <name>car</name>
          <color>#ff0000</color>
          <type>any</type>
          <attributes>
          </attributes>
        </label>
      </labels>
    </task>
    <dumped>2026-11-25 06:38:35.236697+00:00</dumped>
  </meta>
{images}
</annotations>
"""
    members = {
        f"images/street_{i:02d}.jpg": _jpeg((120, 120, 120)) for i in range(20) if i % 3 != 1 or i > 16
    }
    return {**members, "annotations.xml": xml.encode()}


def test_xml_naming_missing_images_is_refused_then_counted(tmp_path):
    members = _missing_images_export()
    assert sum(n.startswith("images/") for n in members) == 14  # 6 of the 20 named are missing
    folder = _dataset(tmp_path / "ds", members, [("car", "any")])

    with pytest.raises(DatasetError, match=r"dropped 6 of 20 images \(30%\).*6 not in the zip"):
        prepare(str(folder), tmp_path / "refused")
    assert not list((tmp_path / "refused").glob("*.tfrecord"))  # refused before anything was written

    report = prepare(str(folder), tmp_path / "data", max_dropped_images=0.5)
    print(summary_line(report.to_dict()))
    assert report.images_selected == 20 and report.dropped_images == {"image_not_in_zip": 6}
    assert sorted(e["image"].rsplit("/", 1)[1] for e in report.skipped_images) == [
        f"street_{i:02d}.jpg" for i in (1, 4, 7, 10, 13, 16)
    ]
    assert (report.train_images, report.validation_images, report.test_images) == (13, 1, 0)
    assert report.split["mode"] == "random"
    assert report.split["description"] == f"random 90/10 seeded by fingerprint {report.fingerprint}"
    assert report.objects == 14

    # the trainer's command line refuses it before TensorFlow loads: bad input, exit 2, the reason
    code, result, _ = run_trainer(
        "prepare", "--dataset", str(folder), "--output", str(tmp_path / "run"), timeout=180
    )
    assert code == 2 and result["status"] == "error"
    assert "dropped 6 of 20 images" in result["error"] and "max_dropped_images" in result["error"]


# -- tags, points and polylines beside boxes -------------------------------------------------------

MIXED_XML = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta>
    <task>
      <id>9</id>
      <name>mixed</name>
      <size>4</size>
      <mode>annotation</mode>
      <overlap>0</overlap>
      <subset>default</subset>
      <start_frame>0</start_frame>
      <stop_frame>3</stop_frame>
      <frame_filter></frame_filter>
      <labels>
        <label><name>car</name><color>#ff0000</color><type>rectangle</type><attributes></attributes></label>
        <label><name>weather</name><color>#00ff00</color><type>tag</type><attributes></attributes></label>
        <label><name>pole</name><color>#0000ff</color><type>any</type><attributes></attributes></label>
        <label><name>lane</name><color>#ffff00</color><type>polyline</type><attributes></attributes></label>
        <label><name>kerb</name><color>#00ffff</color><type>any</type><attributes></attributes></label>
        <label><name>truck</name><color>#ff00ff</color><type>any</type><attributes></attributes></label>
      </labels>
    </task>
    <dumped>2026-11-25 06:38:35.236697+00:00</dumped>
  </meta>
  <image id="0" name="a.jpg" width="64" height="48">
    <tag label="weather" source="manual">
    </tag>
    <box label="car" source="manual" occluded="0" xtl="-6.00" ytl="2.00" xbr="20.00" ybr="30.00" z_order="0">
    </box>
    <box label="car" source="manual" occluded="0" xtl="30.00" ytl="10.00" xbr="30.00" ybr="25.00" z_order="0">
    </box>
    <points label="pole" source="manual" occluded="0" points="5.00,5.00;9.00,9.00" z_order="0">
    </points>
    <polyline label="lane" source="manual" occluded="0" points="0.00,40.00;63.00,44.00" z_order="0">
    </polyline>
  </image>
  <image id="1" name="b.jpg" width="64" height="48">
    <tag label="weather" source="manual">
    </tag>
    <box label="car" source="manual" occluded="0" xtl="10.00" ytl="10.00" xbr="40.00" ybr="40.00" z_order="0">
    </box>
    <box label="car" source="manual" occluded="0" xtl="100.00" ytl="10.00" xbr="120.00" ybr="30.00" z_order="0">
    </box>
    <polygon label="kerb" source="manual" occluded="0" points="1.00,1.00;20.00,20.00" z_order="0">
    </polygon>
    <polyline label="lane" source="manual" occluded="0" points="0.00,40.00;63.00,44.00" z_order="0">
    </polyline>
  </image>
  <image id="2" name="c.jpg" width="64" height="48">
    <box label="car" source="manual" occluded="0" xtl="5.00" ytl="5.00" xbr="25.00" ybr="25.00" z_order="0">
    </box>
    <points label="pole" source="manual" occluded="0" points="50.00,5.00" z_order="0">
    </points>
  </image>
  <image id="3" name="d.jpg" width="64" height="48">
    <box label="car" source="manual" occluded="0" xtl="8.00" ytl="8.00" xbr="30.00" ybr="30.00" z_order="0">
    </box>
    <ellipse label="car" source="manual" occluded="0" cx="45.00" cy="24.00" rx="8.00" ry="5.00" z_order="0">
    </ellipse>
  </image>
</annotations>
"""


def test_tags_points_polylines_beside_boxes_are_counted_not_trained(tmp_path):
    images = {f"images/{n}": _jpeg((90, 90, 90)) for n in ("a.jpg", "b.jpg", "c.jpg", "d.jpg")}
    labels = [
        ("car", "rectangle"),
        ("weather", "tag"),
        ("pole", "any"),
        ("lane", "polyline"),
        ("kerb", "any"),
        ("truck", "any"),
    ]
    folder = _dataset(tmp_path / "ds", {**images, "annotations.xml": MIXED_XML.encode()}, labels)
    report = prepare(str(folder), tmp_path / "data", validation_fraction=0.25)
    print(summary_line(report.to_dict()))

    assert [e["name"] for e in report.labels] == ["car"]  # the only label with training shapes
    assert report.labels_left_out == [
        {"name": "weather", "cvat_id": 2, "reason": "tag label"},
        {"name": "pole", "cvat_id": 3, "reason": "only points"},
        {"name": "lane", "cvat_id": 4, "reason": "only polyline"},
        {"name": "kerb", "cvat_id": 5, "reason": "every shape dropped: degenerate_polygon 1"},
        {"name": "truck", "cvat_id": 6, "reason": "no shapes"},
    ]
    assert report.dropped_shapes == {
        "unsupported_tag": 2,
        "unsupported_points": 2,
        "unsupported_polyline": 2,
        "degenerate_box": 1,  # zero width
        "degenerate_polygon": 1,  # two points
        "outside_image": 1,  # wholly right of a 64-pixel-wide image
    }
    assert report.clipped_shapes == 1 and report.dropped_images == {}
    assert report.objects == 5  # a (clipped), b, c, d: one car each; and d's ellipse
    d = next(
        r for split in ("train", "val") for r in _records(tmp_path / "data", split) if r["name"] == "d.jpg"
    )
    assert d["classes"] == [1, 1] and d["boxes"][1] == pytest.approx(
        [37 / 64, 19 / 48, 53 / 64, 29 / 48], abs=1e-4
    )
    assert (report.train_images, report.validation_images) == (3, 1)
    line = summary_line(report.to_dict())
    assert "labels left out: weather (tag label), pole (only points)" in line and "outside_image 1" in line

    # the model card says the same (from the trainer result's "prepared")
    from airflow_cvat.deploy.card import card_json, card_markdown
    from airflow_cvat.trainer.prepare import summary

    card = card_json(
        model_name="m", version="v1", created="now", run_uri="file:///run", labels=report.labels, metrics={},
        result={"prepared": summary(report.to_dict())}, data=None, base_model={}, tflite={}, files=[],
    )  # fmt: skip
    assert card["training_data"]["dropped_shapes"]["unsupported_tag"] == 2
    markdown = card_markdown(card)
    assert f"- split: random 75/25 seeded by fingerprint {report.fingerprint}" in markdown
    assert "- labels left out of the model: weather (tag label), pole (only points)," in markdown
    assert "degenerate_polygon 1, outside_image 1, unsupported_points 2" in markdown

    # asked for: a label without shapes becomes a class (not tags, points or skeleton labels)
    kept = prepare(str(folder), tmp_path / "kept", validation_fraction=0.25, keep_empty_labels=True)
    assert [e["name"] for e in kept.labels] == ["car", "pole", "lane", "kerb", "truck"]
    assert kept.labels_left_out == [{"name": "weather", "cvat_id": 2, "reason": "tag label"}]


# -- CVAT's own recorded exports ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["export_cvat_images_with_images.zip", "export_coco_with_images.zip"])
def test_recorded_cvat_exports(tmp_path, name):
    with zipfile.ZipFile(RECORDED / name) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    folder = _dataset(tmp_path / "ds", members, [("car", "any"), ("person", "any")])
    report = prepare(str(folder), tmp_path / "data")
    print(name, "->", summary_line(report.to_dict()))
    assert report.images_selected == 10 and report.dropped_images == {}
    assert report.train_images + report.validation_images == 10 and report.split["mode"] == "random"
    assert [e["name"] for e in report.labels] == ["car", "person"]
