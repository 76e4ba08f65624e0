"""Synthetic images whose answer is known, written as CVAT exports.

Why this exists: no real dataset or weights can be fetched on these machines, yet the pipeline
(export -> convert -> train -> evaluate -> pre-annotate) needs data a small detector can learn.
Each label is drawn as a distinct shape *and* colour on a noisy background, so a detector that
learns anything learns these, and an evaluation with a quality gate has a meaningful target.

Both worlds import this module (the Airflow side, the CVAT test double, the trainer's tests), so
it uses the standard library, numpy and Pillow only.

Determinism: frame ``i`` of seed ``s`` is drawn from its own random generator seeded with
``(s, i)``, so any single frame can be regenerated on demand without drawing the ones before it.
That is what lets the CVAT double serve 2,000 frames without keeping their JPEGs in memory.

Exports: :func:`write_export` streams frames into a zip laid out exactly like CVAT's own
"COCO 1.0" and "CVAT for images 1.1" exports (see ``tests/cvat_recorded``): one image at a
time goes into the zip, the (small) annotation file is written last.
"""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO
from xml.etree import ElementTree as ET

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "DEFAULT_LABELS",
    "EXPORT_FORMATS",
    "SyntheticFrame",
    "SyntheticShape",
    "generate_frame",
    "generate_frames",
    "generate_shapes",
    "label_style",
    "write_export",
    "write_export_file",
]

DEFAULT_LABELS: tuple[str, ...] = ("circle", "square", "triangle")
COCO_FORMAT = "COCO 1.0"
CVAT_IMAGES_FORMAT = "CVAT for images 1.1"
EXPORT_FORMATS: tuple[str, ...] = (COCO_FORMAT, CVAT_IMAGES_FORMAT)

# Distinct, saturated colours: far from the grey background and from each other, so colour
# alone separates classes even for a tiny network.
_PALETTE: tuple[tuple[int, int, int], ...] = (
    (220, 30, 30),  # red
    (30, 190, 40),  # green
    (40, 60, 230),  # blue
    (235, 200, 20),  # yellow
    (200, 40, 200),  # magenta
    (30, 200, 210),  # cyan
    (240, 130, 20),  # orange
    (120, 60, 20),  # brown
)
_KINDS: tuple[str, ...] = ("circle", "square", "triangle")
_CIRCLE_VERTICES = 24
_MIN_SIZE, _MAX_SIZE = 0.15, 0.45
_PLACEMENT_TRIES = 40
_JPEG_QUALITY = 90


@dataclass
class SyntheticShape:
    """One annotated object, in CVAT's terms.

    ``points`` are pixels: ``[xtl, ytl, xbr, ybr]`` for a rectangle, ``[x1, y1, x2, y2, ...]``
    for a polygon. The optional fields carry what a CVAT shape has beyond geometry, so the test
    double can export annotations that were changed through its API without losing them.
    """

    label: str
    type: str  # "rectangle" | "polygon"
    points: list[float]
    occluded: bool = False
    source: str = "manual"
    z_order: int = 0
    attributes: dict[str, str] = field(default_factory=dict)

    def bbox(self) -> tuple[float, float, float, float]:
        """Tight box ``(xmin, ymin, xmax, ymax)`` of the shape."""
        xs, ys = self.points[0::2], self.points[1::2]
        return min(xs), min(ys), max(xs), max(ys)

    def area(self) -> float:
        """Pixel area: box area for rectangles, shoelace area for polygons (what COCO wants)."""
        if self.type == "rectangle":
            x0, y0, x1, y1 = self.points[:4]
            return abs(x1 - x0) * abs(y1 - y0)
        xs, ys = self.points[0::2], self.points[1::2]
        twice = sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs)))
        return abs(twice) / 2.0


@dataclass
class SyntheticFrame:
    """One image and its ground truth.

    ``frame`` is the frame number inside a CVAT task; when None, :func:`write_export` numbers
    frames in the order it receives them. ``subset`` is the CVAT subset of the frame's task
    ("" for none, which CVAT exports as "default").
    """

    name: str
    width: int
    height: int
    jpeg: bytes
    shapes: list[SyntheticShape]
    frame: int | None = None
    subset: str = ""


def label_style(labels: Sequence[str], label: str) -> tuple[str, tuple[int, int, int]]:
    """Shape kind and colour for a label.

    The default labels get their namesake shape (circle red, square green, triangle blue); other
    labels cycle through the kinds and the palette, so every label up to the palette's size is a
    distinct (shape, colour) pair.
    """
    index = list(labels).index(label)
    kind = label if label in _KINDS else _KINDS[index % len(_KINDS)]
    return kind, _PALETTE[index % len(_PALETTE)]


def generate_frames(
    count: int,
    *,
    width: int = 128,
    height: int = 128,
    labels: Sequence[str] = DEFAULT_LABELS,
    seed: int = 0,
    start: int = 0,
    max_objects: int = 3,
) -> Iterator[SyntheticFrame]:
    """Yield frames ``start .. start+count-1`` lazily; the same arguments give the same frames."""
    for index in range(start, start + count):
        yield generate_frame(
            index, width=width, height=height, labels=labels, seed=seed, max_objects=max_objects
        )


def generate_frame(
    index: int,
    *,
    width: int = 128,
    height: int = 128,
    labels: Sequence[str] = DEFAULT_LABELS,
    seed: int = 0,
    max_objects: int = 3,
) -> SyntheticFrame:
    """Draw frame ``index`` alone (random access, for servers that regenerate on demand)."""
    rng = np.random.default_rng([seed, index])
    objects = _layout(rng, width, height, labels, max_objects)
    # The background draws from the generator after the layout, so generate_shapes() can
    # reproduce the layout without paying for pixels.
    image = _noisy_background(rng, width, height)
    draw = ImageDraw.Draw(image)
    for shape, fill in objects:
        _paint(draw, shape, fill)
    return SyntheticFrame(
        name=f"frame_{index:06d}.jpg",
        width=width,
        height=height,
        jpeg=_encode_jpeg(image),
        shapes=[shape for shape, _ in objects],
        frame=index,
    )


def generate_shapes(
    index: int,
    *,
    width: int = 128,
    height: int = 128,
    labels: Sequence[str] = DEFAULT_LABELS,
    seed: int = 0,
    max_objects: int = 3,
) -> list[SyntheticShape]:
    """The annotations of frame ``index`` without drawing it: cheap ground truth for big tasks."""
    rng = np.random.default_rng([seed, index])
    return [shape for shape, _ in _layout(rng, width, height, labels, max_objects)]


_Fill = tuple[int, int, int]


def _layout(
    rng: np.random.Generator,
    width: int,
    height: int,
    labels: Sequence[str],
    max_objects: int,
) -> list[tuple[SyntheticShape, _Fill]]:
    """Choose labels, places, sizes and colours; every random draw for objects happens here."""
    if not labels:
        raise ValueError("at least one label is needed")
    objects: list[tuple[SyntheticShape, _Fill]] = []
    boxes: list[tuple[float, float, float, float]] = []
    for _ in range(int(rng.integers(1, max(1, max_objects) + 1))):
        label = str(labels[int(rng.integers(len(labels)))])
        box = _place(rng, width, height, boxes)
        if box is None:
            continue
        boxes.append(box)
        kind, colour = label_style(labels, label)
        jitter = rng.integers(-20, 21, size=3)
        fill = tuple(int(c) for c in np.clip(np.array(colour) + jitter, 0, 255))
        objects.append((_outline(kind, label, box), fill))  # type: ignore[arg-type]
    return objects


def _noisy_background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Low-saturation grey with per-pixel noise: texture for the detector to ignore."""
    base = rng.integers(90, 170, size=3)
    tint = rng.integers(-12, 13, size=3)
    noise = rng.normal(0.0, 14.0, size=(height, width, 3))
    pixels = np.clip(base + tint + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def _place(
    rng: np.random.Generator,
    width: int,
    height: int,
    taken: list[tuple[float, float, float, float]],
) -> tuple[float, float, float, float] | None:
    """A square box of random size that overlaps none of ``taken``, or None when none fits."""
    side = min(width, height)
    for _ in range(_PLACEMENT_TRIES):
        size = int(round(rng.uniform(_MIN_SIZE, _MAX_SIZE) * side))
        x0 = int(rng.integers(0, width - size + 1))
        y0 = int(rng.integers(0, height - size + 1))
        box = (float(x0), float(y0), float(x0 + size), float(y0 + size))
        if not any(_overlaps(box, other) for other in taken):
            return box
    return None


def _overlaps(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """Whether two boxes intersect (touching counts, to keep a visible gap)."""
    return not (a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1])


def _outline(kind: str, label: str, box: tuple[float, float, float, float]) -> SyntheticShape:
    """The annotation of an object of ``kind`` filling ``box``: squares as boxes, others as polygons."""
    x0, y0, x1, y1 = box
    if kind == "square":
        return SyntheticShape(label=label, type="rectangle", points=[x0, y0, x1, y1])
    if kind == "circle":
        return SyntheticShape(label=label, type="polygon", points=_circle_outline(box))
    return SyntheticShape(label=label, type="polygon", points=[x0, y1, (x0 + x1) / 2.0, y0, x1, y1])


def _paint(draw: ImageDraw.ImageDraw, shape: SyntheticShape, fill: _Fill) -> None:
    """Paint exactly the annotated region, so the annotation is tight by construction."""
    if shape.type == "rectangle":
        x0, y0, x1, y1 = shape.points
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=fill)
    else:
        draw.polygon(list(zip(shape.points[0::2], shape.points[1::2], strict=True)), fill=fill)


def _circle_outline(box: tuple[float, float, float, float]) -> list[float]:
    """A circle inscribed in ``box`` as a polygon, rounded to 1/100 px like CVAT's export."""
    cx, cy = (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0
    radius = (box[2] - box[0]) / 2.0
    points: list[float] = []
    for i in range(_CIRCLE_VERTICES):
        angle = 2.0 * math.pi * i / _CIRCLE_VERTICES
        points += [round(cx + radius * math.cos(angle), 2), round(cy + radius * math.sin(angle), 2)]
    return points


def _encode_jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=_JPEG_QUALITY)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# Writing CVAT exports
# --------------------------------------------------------------------------------------------


def write_export(
    frames: Iterable[SyntheticFrame],
    labels: Sequence[str],
    fileobj: BinaryIO,
    *,
    format: str = COCO_FORMAT,
    save_images: bool = True,
    task_name: str = "synthetic",
    task_id: int = 1,
    segments: Sequence[tuple[int, int, int]] = (),
    project: bool = False,
) -> int:
    """Stream ``frames`` into a zip shaped like CVAT's export in ``format``; return frames written.

    Images go into the zip one at a time (never all in memory); the annotation files, which
    are small, are written at the end. ``fileobj`` need not be seekable. ``task_id`` and
    ``segments`` (``(job_id, start_frame, stop_frame)``) only fill the CVAT XML's task meta.
    Subsets (``SyntheticFrame.subset``) as CVAT writes them: COCO has one
    ``instances_<subset>.json`` and ``images/<subset>/`` per subset; CVAT XML names a task's
    subset in its meta, and a ``project`` export's images carry a ``subset`` attribute and lie
    in ``images/<subset>/``.
    """
    if format == COCO_FORMAT:
        writer: _ExportWriter = _CocoWriter(labels)
    elif format == CVAT_IMAGES_FORMAT:
        writer = _CvatImagesWriter(labels, task_name, task_id, segments, project)
    else:
        raise ValueError(f"unsupported export format {format!r}; use one of {EXPORT_FORMATS}")
    written = 0
    with zipfile.ZipFile(fileobj, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for position, frame in enumerate(frames):
            number = position if frame.frame is None else frame.frame
            if save_images:
                # JPEG does not deflate: store it and spare the CPU.
                archive.writestr(writer.image_path(frame), frame.jpeg, zipfile.ZIP_STORED)
            writer.add(frame, number)
            written += 1
        for path, data in writer.files(written):
            archive.writestr(path, data)
    return written


def write_export_file(
    path: str | os.PathLike[str],
    count: int,
    *,
    format: str = COCO_FORMAT,
    **generate_kwargs: object,
) -> None:
    """Generate ``count`` frames and write them as an export zip at ``path`` (fixtures, demos)."""
    labels = tuple(generate_kwargs.get("labels", DEFAULT_LABELS))  # type: ignore[arg-type]
    frames = generate_frames(count, **generate_kwargs)  # type: ignore[arg-type]
    with open(path, "wb") as fileobj:
        write_export(frames, labels, fileobj, format=format)


class _ExportWriter:
    """Collects per-frame annotations while images stream, renders the annotation file last."""

    annotation_path: str

    def image_path(self, frame: SyntheticFrame) -> str:
        raise NotImplementedError

    def files(self, count: int) -> list[tuple[str, bytes]]:
        """The annotation files, path and content, once every frame is added."""
        return [(self.annotation_path, self.finish(count))]

    def add(self, frame: SyntheticFrame, number: int) -> None:
        raise NotImplementedError

    def finish(self, count: int) -> bytes:
        raise NotImplementedError


def _subset_name(frame: SyntheticFrame) -> str:
    return frame.subset or "default"


def coco_document(categories: dict[str, int], images: list[dict], annotations: list[dict]) -> bytes:
    """One ``instances_<subset>.json`` as CVAT's COCO 1.0 writes it (its empty licence and info
    blocks included), so readers meet the file they will meet in a real export."""
    document = {
        "licenses": [{"name": "", "id": 0, "url": ""}],
        "info": {
            "contributor": "",
            "date_created": "",
            "description": "",
            "url": "",
            "version": "",
            "year": "",
        },
        "categories": [{"id": cid, "name": name, "supercategory": ""} for name, cid in categories.items()],
        "images": images,
        "annotations": annotations,
    }
    return json.dumps(document).encode()


class _CocoWriter(_ExportWriter):
    """COCO 1.0 as CVAT (datumaro) writes it: ``annotations/instances_<subset>.json`` per subset."""

    def __init__(self, labels: Sequence[str]) -> None:
        self.category_ids = {name: i for i, name in enumerate(labels, start=1)}
        self.subsets: dict[str, tuple[list[dict], list[dict]]] = {}  # subset -> (images, annotations)

    def image_path(self, frame: SyntheticFrame) -> str:
        return f"images/{_subset_name(frame)}/{frame.name}"

    def add(self, frame: SyntheticFrame, number: int) -> None:
        self.images, self.annotations = self.subsets.setdefault(_subset_name(frame), ([], []))
        image_id = len(self.images) + 1
        self.images.append(
            {
                "id": image_id,
                "width": frame.width,
                "height": frame.height,
                "file_name": frame.name,
                "license": 0,
                "flickr_url": "",
                "coco_url": "",
                "date_captured": 0,
            }
        )
        for shape in frame.shapes:
            if shape.type in ("rectangle", "polygon"):
                self.annotations.append(self._annotation(shape, image_id))

    def _annotation(self, shape: SyntheticShape, image_id: int) -> dict:
        x0, y0, x1, y1 = shape.bbox()
        attributes: dict[str, object] = dict(shape.attributes)
        attributes["occluded"] = shape.occluded
        if shape.type == "rectangle":
            attributes["rotation"] = 0.0
        segmentation = [] if shape.type == "rectangle" else [[float(p) for p in shape.points]]
        return {
            "id": len(self.annotations) + 1,
            "image_id": image_id,
            "category_id": self.category_ids[shape.label],
            "segmentation": segmentation,
            "area": float(shape.area()),
            "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
            "iscrowd": 0,
            "attributes": attributes,
        }

    def files(self, count: int) -> list[tuple[str, bytes]]:
        subsets = self.subsets or {"default": ([], [])}
        return [
            (f"annotations/instances_{subset}.json", self._document(images, annotations))
            for subset, (images, annotations) in subsets.items()
        ]

    def _document(self, images: list[dict], annotations: list[dict]) -> bytes:
        return coco_document(self.category_ids, images, annotations)


class _CvatImagesWriter(_ExportWriter):
    """CVAT for images 1.1: ``annotations.xml`` beside ``images/``."""

    annotation_path = "annotations.xml"

    def __init__(
        self,
        labels: Sequence[str],
        task_name: str,
        task_id: int,
        segments: Sequence[tuple[int, int, int]],
        project: bool = False,
    ) -> None:
        self.labels = list(labels)
        self.task_name = task_name
        self.task_id = task_id
        self.segments = list(segments)
        self.project = project
        self.subset = "default"  # a task's, for its meta: its frames all share it
        self.image_elements: list[ET.Element] = []
        self.frame_numbers: list[int] = []

    def image_path(self, frame: SyntheticFrame) -> str:
        return f"images/{_subset_name(frame)}/{frame.name}" if self.project else f"images/{frame.name}"

    def add(self, frame: SyntheticFrame, number: int) -> None:
        attributes = {"id": str(number), "name": frame.name}
        if self.project:
            attributes["subset"] = _subset_name(frame)
        attributes |= {"width": str(frame.width), "height": str(frame.height)}
        element = ET.Element("image", attributes)
        self.subset = _subset_name(frame)
        for shape in frame.shapes:
            child = _shape_element(shape)
            if child is not None:
                element.append(child)
        self.image_elements.append(element)
        self.frame_numbers.append(number)

    def finish(self, count: int) -> bytes:
        root = ET.Element("annotations")
        ET.SubElement(root, "version").text = "1.1"
        root.append(self._meta(count))
        root.extend(self.image_elements)
        ET.indent(root, space="  ")
        return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="utf-8")

    def _meta(self, count: int) -> ET.Element:
        meta = ET.Element("meta")
        task = ET.SubElement(meta, "task")
        stop = max(self.frame_numbers) if self.frame_numbers else 0
        start = min(self.frame_numbers) if self.frame_numbers else 0
        for tag, text in (
            ("id", self.task_id),
            ("name", self.task_name),
            ("size", count),
            ("mode", "annotation"),
            ("overlap", 0),
            ("bugtracker", ""),
            ("created", "2026-01-01 00:00:00.000000+00:00"),
            ("updated", "2026-01-01 00:00:00.000000+00:00"),
            ("subset", self.subset),
            ("start_frame", start),
            ("stop_frame", stop),
            ("frame_filter", ""),
        ):
            ET.SubElement(task, tag).text = str(text)
        segments = ET.SubElement(task, "segments")
        for job_id, seg_start, seg_stop in self.segments:
            segment = ET.SubElement(segments, "segment")
            for tag, text in (("id", job_id), ("start", seg_start), ("stop", seg_stop), ("url", "")):
                ET.SubElement(segment, tag).text = str(text)
        owner = ET.SubElement(task, "owner")
        ET.SubElement(owner, "username").text = "admin"
        ET.SubElement(owner, "email").text = "admin@localhost.localdomain"
        ET.SubElement(task, "assignee").text = ""
        labels = ET.SubElement(task, "labels")
        for name in self.labels:
            label = ET.SubElement(labels, "label")
            ET.SubElement(label, "name").text = name
            ET.SubElement(label, "color").text = "#{:02x}{:02x}{:02x}".format(
                *label_style(self.labels, name)[1]
            )
            ET.SubElement(label, "type").text = "any"
            ET.SubElement(label, "attributes").text = "\n"
        ET.SubElement(meta, "dumped").text = "2026-01-01 00:00:00.000000+00:00"
        return meta


def _shape_element(shape: SyntheticShape) -> ET.Element | None:
    """``<box>`` or ``<polygon>`` with CVAT's attribute order and two-decimal coordinates."""
    common = {"label": shape.label, "source": shape.source, "occluded": "1" if shape.occluded else "0"}
    if shape.type == "rectangle":
        x0, y0, x1, y1 = shape.points[:4]
        coords = {"xtl": f"{x0:.2f}", "ytl": f"{y0:.2f}", "xbr": f"{x1:.2f}", "ybr": f"{y1:.2f}"}
        element = ET.Element("box", {**common, **coords, "z_order": str(shape.z_order)})
    elif shape.type == "polygon":
        pairs = zip(shape.points[0::2], shape.points[1::2], strict=True)
        points = ";".join(f"{x:.2f},{y:.2f}" for x, y in pairs)
        element = ET.Element("polygon", {**common, "points": points, "z_order": str(shape.z_order)})
    else:
        return None
    for name, value in shape.attributes.items():
        ET.SubElement(element, "attribute", {"name": name}).text = str(value)
    return element
