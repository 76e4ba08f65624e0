"""Reading CVAT export archives ("COCO 1.0" and "CVAT for images 1.1") without third-party code.

Imported by the Airflow side (label counts for the manifest) and by the trainer (TFRecords), so it
uses the standard library only. Shapes come out in one form whatever the format: pixel
coordinates, rectangles as [xtl, ytl, xbr, ybr], polygons as flat [x1, y1, x2, y2, ...].
"""

from __future__ import annotations

import json
import posixpath
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

COCO = "COCO 1.0"
CVAT_IMAGES = "CVAT for images 1.1"


class ArchiveError(ValueError):
    """The archive is not a CVAT export this package can read."""


@dataclass
class Shape:
    label: str
    type: str  # "rectangle" | "polygon" | "mask"
    points: list[float]
    rotation: float = 0.0
    mask: dict[str, Any] | None = None  # COCO RLE {"counts", "size"} or CVAT {"rle", "left", "top", ...}


@dataclass
class ArchiveImage:
    name: str
    width: int
    height: int
    member: str  # path of the image file inside the zip ("" when exported without images)
    shapes: list[Shape] = field(default_factory=list)


def detect_format(zf: zipfile.ZipFile) -> str:
    names = zf.namelist()
    if "annotations.xml" in names:
        return CVAT_IMAGES
    if any(n.startswith("annotations/instances_") and n.endswith(".json") for n in names):
        return COCO
    raise ArchiveError(
        "the archive is neither a CVAT 'COCO 1.0' export (annotations/instances_*.json) nor a "
        "'CVAT for images 1.1' export (annotations.xml); export the task again in one of these formats"
    )


def read_labels_and_images(zf: zipfile.ZipFile) -> tuple[list[str], list[ArchiveImage]]:
    """All label names (in the archive's order) and every image with its shapes."""
    fmt = detect_format(zf)
    return _read_coco(zf) if fmt == COCO else _read_cvat_images(zf)


def _image_members(zf: zipfile.ZipFile, prefix: str) -> dict[str, str]:
    """Map an image's name as annotations spell it to its zip member (subset folders vary)."""
    members: dict[str, str] = {}
    for name in zf.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            rest = name[len(prefix) :]
            members[rest] = name
            members.setdefault(rest.split("/", 1)[-1], name)
    return members


def _read_coco(zf: zipfile.ZipFile) -> tuple[list[str], list[ArchiveImage]]:
    labels: list[str] = []
    images: list[ArchiveImage] = []
    members = _image_members(zf, "images/")
    for ann_file in sorted(n for n in zf.namelist() if n.startswith("annotations/instances_")):
        subset = posixpath.basename(ann_file)[len("instances_") : -len(".json")]
        data = json.loads(zf.read(ann_file))
        categories = {c["id"]: c["name"] for c in data.get("categories", [])}
        labels.extend(name for name in categories.values() if name not in labels)
        by_id: dict[int, ArchiveImage] = {}
        for img in data.get("images", []):
            member = members.get(f"{subset}/{img['file_name']}") or members.get(img["file_name"], "")
            by_id[img["id"]] = ArchiveImage(img["file_name"], img["width"], img["height"], member)
        for ann in data.get("annotations", []):
            by_id[ann["image_id"]].shapes.append(_coco_shape(ann, categories[ann["category_id"]]))
        images.extend(by_id.values())
    return labels, images


def _coco_shape(ann: dict[str, Any], label: str) -> Shape:
    x, y, w, h = ann["bbox"]
    box = [x, y, x + w, y + h]
    seg = ann.get("segmentation")
    rotation = float(ann.get("attributes", {}).get("rotation", 0.0) or 0.0)
    if isinstance(seg, dict):
        return Shape(label, "mask", box, mask=seg)
    if seg and len(seg[0]) >= 6:
        return Shape(label, "polygon", [float(v) for v in seg[0]], rotation)
    return Shape(label, "rectangle", box, rotation)


def _read_cvat_images(zf: zipfile.ZipFile) -> tuple[list[str], list[ArchiveImage]]:
    labels: list[str] = []
    images: list[ArchiveImage] = []
    members = _image_members(zf, "images/")
    with zf.open("annotations.xml") as fh:
        for _, elem in ET.iterparse(fh, events=("end",)):
            if elem.tag == "label" and elem.findtext("name") and elem.findtext("name") not in labels:
                labels.append(elem.findtext("name"))
            elif elem.tag == "image":
                name = elem.get("name", "")
                image = ArchiveImage(
                    name, int(elem.get("width")), int(elem.get("height")), members.get(name, "")
                )
                image.shapes = [s for child in elem if (s := _cvat_shape(child)) is not None]
                images.append(image)
                elem.clear()
    return labels, images


def _cvat_shape(elem: ET.Element) -> Shape | None:
    label = elem.get("label", "")
    rotation = float(elem.get("rotation", 0.0))
    if elem.tag == "box":
        box = [float(elem.get(k)) for k in ("xtl", "ytl", "xbr", "ybr")]
        return Shape(label, "rectangle", box, rotation)
    if elem.tag == "polygon":
        points = [float(v) for pair in elem.get("points", "").split(";") for v in pair.split(",")]
        return Shape(label, "polygon", points, rotation)
    if elem.tag == "mask":
        left, top = int(elem.get("left")), int(elem.get("top"))
        width, height = int(elem.get("width")), int(elem.get("height"))
        mask = {"rle": elem.get("rle", ""), "left": left, "top": top, "width": width, "height": height}
        return Shape(label, "mask", [left, top, left + width, top + height], mask=mask)
    return None  # tags, points, polylines, cuboids: not used for detection


def iter_selected(images: list[ArchiveImage], frame_names: list[str] | None) -> Iterator[ArchiveImage]:
    """The images a manifest selects; no selection means every image in the archive."""
    if not frame_names:
        yield from images
        return
    wanted = set(frame_names)
    yield from (image for image in images if image.name in wanted)
