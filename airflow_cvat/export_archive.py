"""Reading CVAT export archives ("COCO 1.0" and "CVAT for images 1.1") without third-party code.

The one reader of CVAT zips: the Airflow side reads it for the manifest's label counts, the
trainer builds its TFRecords on it (adding pixels and masks), so both count the same images.
Standard library only. The reader is faithful: it reports what the archive holds, in one form
whatever the format, and decides nothing about training (prepare applies its rules on top):

* coordinates are pixels; rectangles are [xtl, ytl, xbr, ybr]; polygons are flat
  [x1, y1, x2, y2, ...] (all rings in ``Shape.polygons``); ellipses are [cx, cy, rx, ry];
* shapes a detector can learn (rectangle, polygon, mask, ellipse) are ``ArchiveImage.shapes``;
  tags, points, polylines, cuboids and skeletons are ``ArchiveImage.others``, so a caller can
  count them instead of losing them;
* every image carries its CVAT subset ("" when the export has none or calls it "default"):
  COCO's ``annotations/instances_<subset>.json``, the ``subset`` attribute of a project's
  ``<image>``, or the ``<subset>`` of a task or job export's meta. The same file name in two
  subsets is two images (``ArchiveImage.key``);
* an image's zip member is found by one rule (:class:`_ImageIndex`); ``member`` is "" when
  the zip lacks the image (exported without images, or the file is missing).
"""

from __future__ import annotations

import json
import posixpath
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import xml.etree.ElementTree

COCO = "COCO 1.0"
CVAT_IMAGES = "CVAT for images 1.1"

DETECTION_TYPES = ("rectangle", "polygon", "mask", "ellipse")
"""Shape types a detector can learn; everything else is reported in ``ArchiveImage.others``."""
NO_SUBSET = ("", "default")
"""Subset names that mean "no subset": CVAT writes "default" for a task without one."""
_ROLES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "val": "validation",
    "valid": "validation",
    "test": "test",
    "testing": "test",
}


class ArchiveError(ValueError):
    """The archive is not a CVAT export this package can read."""


@dataclass
class Shape:
    label: str
    type: str  # DETECTION_TYPES, or "tag" | "points" | "polyline" | "cuboid" | "skeleton" | ...
    points: list[float]
    rotation: float = 0.0
    mask: dict[str, Any] | None = None  # COCO RLE {"counts", "size"} or CVAT {"rle", "left", "top", ...}
    polygons: list[list[float]] = field(default_factory=list)  # every ring of a polygon (COCO has several)


@dataclass
class ArchiveImage:
    name: str
    width: int
    height: int
    member: str  # path of the image file inside the zip ("" when the zip lacks it)
    shapes: list[Shape] = field(default_factory=list)
    subset: str = ""
    others: list[Shape] = field(default_factory=list)  # tags, points, polylines, ...: not detection shapes

    @property
    def key(self) -> str:
        """Unique within one archive: a project export may hold ``a.jpg`` in Train and in Test."""
        return f"{self.subset}/{self.name}" if self.subset else self.name


def subset_role(subset: str) -> str | None:
    """The role of a CVAT subset: "train", "validation", "test" (usual names, any case) or None."""
    return _ROLES.get(subset.strip().lower())


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


class _ImageIndex:
    """Finds an image's zip member; the one matching rule of both worlds.

    CVAT writes ``images/<name>`` (task and job exports, CVAT XML), ``images/<subset>/<name>``
    (COCO, and project exports of either format), and for video frames a name without extension
    (``frame_000000`` for ``frame_000000.PNG``). In that order: the exact path with the image's
    subset, the exact path without it, the same two without extensions, then a file name that
    appears once in the whole zip. Never a guess between two candidates: ``images/Train/a.jpg``
    is not taken for a missing ``images/Test/a.jpg``.
    """

    def __init__(self, names: list[str], prefix: str = "images/") -> None:
        self.exact: dict[str, str] = {}
        self.stems: dict[str, list[str]] = {}
        self.basenames: dict[str, list[str]] = {}
        for member in names:
            if not member.startswith(prefix) or member.endswith("/"):
                continue
            rest = member[len(prefix) :]
            self.exact[rest] = member
            self.stems.setdefault(_strip_extension(rest), []).append(member)
            self.basenames.setdefault(posixpath.basename(rest), []).append(member)

    def find(self, folder: str, name: str) -> str:
        """The member for ``name`` of subset ``folder`` (as the export spells it), or ""."""
        keys = [f"{folder}/{name}", name] if folder else [name]
        for key in keys:
            if key in self.exact:
                return self.exact[key]
        for key in keys:
            found = self.stems.get(_strip_extension(key), [])
            if len(found) == 1:
                return found[0]
        found = self.basenames.get(posixpath.basename(name), [])
        if len(found) == 1 and (not folder or f"/{folder}/" in f"/{found[0]}"):
            return found[0]
        return ""


def _strip_extension(path: str) -> str:
    root, _ = posixpath.splitext(path)
    return root


def _read_coco(zf: zipfile.ZipFile) -> tuple[list[str], list[ArchiveImage]]:
    labels: list[str] = []
    images: list[ArchiveImage] = []
    index = _ImageIndex(zf.namelist())
    for ann_file in sorted(n for n in zf.namelist() if n.startswith("annotations/instances_")):
        folder = posixpath.basename(ann_file)[len("instances_") : -len(".json")]
        subset = "" if folder in NO_SUBSET else folder
        data = json.loads(zf.read(ann_file))
        categories = {c["id"]: c["name"] for c in data.get("categories", [])}
        labels.extend(name for name in categories.values() if name not in labels)
        by_id: dict[int, ArchiveImage] = {}
        for img in data.get("images", []):
            name = img["file_name"]
            member = index.find(folder, name)
            by_id[img["id"]] = ArchiveImage(name, img["width"], img["height"], member, subset=subset)
        for ann in data.get("annotations", []):
            label = categories.get(ann.get("category_id"), "")  # "" = a category the file does not list
            by_id[ann["image_id"]].shapes.append(_coco_shape(ann, label))
        images.extend(by_id.values())
    return labels, images


def _coco_shape(ann: dict[str, Any], label: str) -> Shape:
    x, y, w, h = (float(v) for v in ann["bbox"])
    box = [x, y, x + w, y + h]
    seg = ann.get("segmentation")
    rotation = float((ann.get("attributes") or {}).get("rotation", 0.0) or 0.0)
    if isinstance(seg, dict):
        return Shape(label, "mask", box, mask=seg)
    if seg:  # polygon rings as written, even degenerate ones: prepare counts those
        rings = [[float(v) for v in ring] for ring in seg]
        return Shape(label, "polygon", rings[0], rotation, polygons=rings)
    return Shape(label, "rectangle", box, rotation)


def _read_cvat_images(zf: zipfile.ZipFile) -> tuple[list[str], list[ArchiveImage]]:
    import xml.etree.ElementTree as ET  # here: the DAG imports this module at parse time

    labels: list[str] = []
    images: list[ArchiveImage] = []
    index = _ImageIndex(zf.namelist())
    meta_subsets: list[str] = []  # the <subset> of a task or job export (a project's images say theirs)
    with zf.open("annotations.xml") as fh:
        for _, elem in ET.iterparse(fh, events=("end",)):
            if elem.tag == "label" and elem.findtext("name") and elem.findtext("name") not in labels:
                labels.append(elem.findtext("name"))
            elif elem.tag == "subset" and not images:
                meta_subsets.append((elem.text or "").strip())
            elif elem.tag == "image":
                default = meta_subsets[0] if len(set(meta_subsets)) == 1 else ""
                folder = elem.get("subset", default)
                subset = "" if folder in NO_SUBSET else folder
                name = elem.get("name", "")
                member = index.find(folder, name)
                image = ArchiveImage(
                    name, int(elem.get("width")), int(elem.get("height")), member, subset=subset
                )
                for child in elem:
                    shape = _cvat_shape(child)
                    (image.shapes if shape.type in DETECTION_TYPES else image.others).append(shape)
                images.append(image)
                elem.clear()
    return labels, images


def _cvat_shape(elem: xml.etree.ElementTree.Element) -> Shape:
    label = elem.get("label", "")
    rotation = float(elem.get("rotation", 0.0) or 0.0)
    if elem.tag == "box":
        box = [float(elem.get(k)) for k in ("xtl", "ytl", "xbr", "ybr")]
        return Shape(label, "rectangle", box, rotation)
    if elem.tag == "polygon":
        points = _points(elem.get("points", ""))
        return Shape(label, "polygon", points, rotation, polygons=[points])
    if elem.tag == "ellipse":
        centre_and_radii = [float(elem.get(k, 0)) for k in ("cx", "cy", "rx", "ry")]
        return Shape(label, "ellipse", centre_and_radii, rotation)
    if elem.tag == "mask":
        left, top = int(elem.get("left")), int(elem.get("top"))
        width, height = int(elem.get("width")), int(elem.get("height"))
        mask = {"rle": elem.get("rle", ""), "left": left, "top": top, "width": width, "height": height}
        return Shape(label, "mask", [left, top, left + width, top + height], mask=mask)
    if elem.tag in ("points", "polyline"):
        return Shape(label, elem.tag, _points(elem.get("points", "")))
    return Shape(label, elem.tag, [])  # tag, cuboid, skeleton, ...: kept for counting


def _points(text: str) -> list[float]:
    return [float(v) for pair in text.split(";") if pair.strip() for v in pair.split(",")]


def is_selected(image: ArchiveImage, names: set[str], stems: set[str]) -> bool:
    """The manifest's frame-name rule: the exact name, or the same name without its extension.

    CVAT's job metadata and its export can spell a video frame differently (``frame_000000``
    against ``frame_000000.PNG``); the stem keeps such frames without matching unrelated ones.
    """
    return image.name in names or _strip_extension(image.name) in stems


def iter_selected(images: list[ArchiveImage], frame_names: list[str] | None) -> Iterator[ArchiveImage]:
    """The images a manifest selects; no selection means every image in the archive."""
    if not frame_names:
        yield from images
        return
    names = set(frame_names)
    stems = {_strip_extension(n) for n in names}
    yield from (image for image in images if is_selected(image, names, stems))
