"""The one CVAT zip reader (airflow_cvat/export_archive.py): subsets, zip members, shape kinds.

Standard library only, like the module: no TensorFlow, so these run in well under a second.
"""

from __future__ import annotations

import io
import json
import zipfile

from airflow_cvat.export_archive import iter_selected, read_labels_and_images, subset_role


def _zip(members: dict[str, bytes | str]) -> zipfile.ZipFile:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return zipfile.ZipFile(io.BytesIO(buffer.getvalue()))


PROJECT_XML = """<?xml version="1.0" encoding="utf-8"?>
<annotations><version>1.1</version>
<meta><project><id>3</id><name>p</name>
  <tasks><task><id>1</id><subset>Train</subset></task><task><id>2</id><subset>Test</subset></task></tasks>
  <subsets>Train
Test</subsets>
  <labels><label><name>car</name></label><label><name>weather</name></label></labels>
</project></meta>
<image id="0" name="img0.jpg" subset="Train" task_id="1" width="8" height="8">
  <box label="car" occluded="0" xtl="0" ytl="2" xbr="4" ybr="4" z_order="0"/>
  <tag label="weather"/>
  <points label="car" points="1,2;3,4"/>
</image>
<image id="0" name="img0.jpg" subset="Test" task_id="2" width="8" height="8">
  <ellipse label="car" cx="4" cy="4" rx="2" ry="1" rotation="10" z_order="0"/>
  <polyline label="car" points="1,2;3,4"/>
</image>
<image id="1" name="img1.jpg" subset="Test" task_id="2" width="8" height="8"></image>
</annotations>"""


def test_project_xml_same_name_in_two_subsets_is_two_images_with_their_own_files():
    zf = _zip(
        {"images/Train/img0.jpg": b"train", "images/Test/img0.jpg": b"test", "annotations.xml": PROJECT_XML}
    )
    labels, images = read_labels_and_images(zf)
    assert labels == ["car", "weather"]
    assert [(i.key, i.member) for i in images] == [
        ("Train/img0.jpg", "images/Train/img0.jpg"),
        ("Test/img0.jpg", "images/Test/img0.jpg"),
        ("Test/img1.jpg", ""),  # missing: never taken for images/Train/img1.jpg or any other file
    ]
    assert [s.type for s in images[0].shapes] == ["rectangle"]
    assert [s.type for s in images[0].others] == ["tag", "points"]
    assert [(s.type, s.points, s.rotation) for s in images[1].shapes] == [("ellipse", [4, 4, 2, 1], 10.0)]
    assert [s.type for s in images[1].others] == ["polyline"]
    assert [subset_role(i.subset) for i in images] == ["train", "test", "test"]


def test_task_xml_takes_its_subset_from_the_meta_and_default_means_none():
    xml = PROJECT_XML.split("<meta>")[0] + (
        "<meta><task><id>1</id><subset>{}</subset></task></meta>"
        '<image id="0" name="a.jpg" width="8" height="8"></image></annotations>'
    )
    for subset, expected in (("Validation", "Validation"), ("default", "")):
        _, images = read_labels_and_images(
            _zip({"images/a.jpg": b"x", "annotations.xml": xml.format(subset)})
        )
        assert [(i.subset, i.member) for i in images] == [(expected, "images/a.jpg")]


def test_coco_subsets_video_frames_without_extension_and_frame_selection():
    def document(names: list[str]) -> str:
        images = [{"id": n + 1, "width": 8, "height": 8, "file_name": name} for n, name in enumerate(names)]
        polygon = {
            "id": 1,
            "image_id": 1,
            "category_id": 1,
            "bbox": [0, 0, 2, 1],
            "segmentation": [[0, 0, 2, 1]],
        }
        categories = [{"id": 1, "name": "car"}]
        return json.dumps({"categories": categories, "images": images, "annotations": [polygon]})

    zf = _zip(
        {
            "images/default/frame_000000.PNG": b"0",
            "images/default/frame_000001.PNG": b"1",
            "annotations/instances_default.json": document(["frame_000000", "frame_000001"]),
        }
    )
    _, images = read_labels_and_images(zf)
    assert [(i.key, i.member) for i in images] == [
        ("frame_000000", "images/default/frame_000000.PNG"),
        ("frame_000001", "images/default/frame_000001.PNG"),
    ]
    # a degenerate polygon (two points) is reported as written: prepare counts and drops it
    assert [(s.type, s.polygons) for s in images[0].shapes] == [("polygon", [[0.0, 0.0, 2.0, 1.0]])]
    # the manifest's frame names select by name, or by name without extension
    assert [i.name for i in iter_selected(images, ["frame_000001.PNG"])] == ["frame_000001"]
