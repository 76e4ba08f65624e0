"""prepare: a dataset folder (manifest.json + CVAT export zips) -> sharded TFRecords + label map.

Output, under ``{output}/data/``: ``train-00000-of-0000N.tfrecord``, ``val-...``, ``test-...``
(when the export has a Test subset), ``label_map.json`` and ``prepare.json``: the record of what
was really trained on (split, classes, everything dropped and why). It is written last, so its
presence means the stage is complete and a retried pod skips it. The export's manifest.json
stays what CVAT gave; prepare.json says what training made of it.

Reading is :mod:`airflow_cvat.export_archive`'s, the same reader the export operator counts
with (frame selection, zip members, subsets); prepare adds pixels, geometry and masks on top.
Rules, applied the same way to both export formats:

* Only the frames the manifest lists (``Archive.frame_names``) count; an archive whose
  ``frame_names`` is empty contributes all its images (a zip imported by hand).
* Split: when the export carries CVAT subsets (COCO ``instances_<subset>.json``, a project's
  ``<image subset=...>``, a task's ``<subset>``), Train trains, Validation validates and Test
  is written apart (``test-*.tfrecord``), never trained on. Images without a subset, or in a
  subset of another name, train. Without a Validation subset, validation is drawn at random
  from the training images. Without any subset, the split is random. Random draws rank each
  image by SHA-256 of (manifest fingerprint, archive, subset, name) and take the lowest
  ``max(1, round(fraction * images))``: deterministic for a dataset, never empty. The same file
  name in two subsets is two images.
* Classes: contiguous ids 1..N (0 is background in the Model Garden) in the order of the
  manifest's labels by CVAT id, names kept. A label is a class only when at least one of its
  shapes reaches the training split; tag labels, labels used only with points, polylines or
  skeletons, and labels without shapes are left out and listed with the reason, unless
  ``keep_empty_labels`` (then every label except tag, skeleton and points labels is a class).
* Images without shapes are kept: they teach the detector what background looks like.
* Shapes partly outside the image are clipped to it (counted as ``clipped_to_image``); a
  shape whose clipped box is under one pixel wide or high is dropped (``outside_image``).
  Degenerate geometry is dropped: boxes under one pixel wide or high (``degenerate_box``),
  polygons with fewer than 3 points (``degenerate_polygon``), empty masks and ellipses.
* Rotated boxes (CVAT's ``rotation``) become the axis-aligned box enclosing the rotated one;
  their mask is the rotated rectangle. Ellipses become a 32-sided polygon.
* Polylines, points, cuboids, skeletons and tags are not detection targets: dropped and
  counted per type (``unsupported_<type>``).
* Images named by the annotations but missing from the zip, and images that do not decode
  (corrupt, truncated, not an image), are dropped and listed. Above ``max_dropped_images``
  (a fraction of the images the manifest selects; default 0.05) prepare fails, before any
  TFRecord is written and before training, saying what was dropped.
* Image bytes pass through unchanged (no re-encoding); width and height come from the image
  header, not from the annotation file.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import shutil
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from airflow_cvat.arguments import MAX_DROPPED_IMAGES
from airflow_cvat.export_archive import (
    ArchiveImage,
    Shape,
    iter_selected,
    read_labels_and_images,
    subset_role,
)
from airflow_cvat.manifest import MANIFEST_NAME, Archive, Manifest
from airflow_cvat.trainer import storage

log = logging.getLogger(__name__)

SHARD_IMAGES = 512
"""Images per TFRecord shard: a few shards let several readers interleave without tiny files."""
PREPARE_VERSION = 2
MIN_BOX_SIDE = 1.0
ELLIPSE_VERTICES = 32
LISTED_IMAGES = 20
"""How many dropped images the summary names (prepare.json lists them all)."""
SPLITS = (("train", "train"), ("validation", "val"), ("test", "test"))
"""(split, TFRecord file prefix); the prefixes are what the training config reads."""


class DatasetError(ValueError):
    """The dataset cannot be used; the message says why and what to do."""


@dataclass
class Instance:
    """One object: label name, box (x0, y0, x1, y1) in pixels, outline polygons or an RLE mask."""

    label: str
    box: tuple[float, float, float, float]
    polygons: list[list[float]] = field(default_factory=list)
    mask: np.ndarray | None = None  # full-image 0/1 mask (CVAT brush masks, COCO RLE)


@dataclass
class ImageRecord:
    """One image of the dataset: where its bytes are, its subset, its shapes as the archive has them.

    ``width``, ``height``, ``format`` and ``instances`` are filled once the image has decoded.
    """

    key: str
    archive: Path
    member: str
    name: str
    subset: str = ""
    shapes: list[Shape] = field(default_factory=list)
    width: int = 0
    height: int = 0
    format: str = ""
    instances: list[Instance] = field(default_factory=list)


@dataclass
class SplitPlan:
    """Which images train, validate and test, and how that was decided (for people and the card)."""

    mode: str  # "subsets" | "random"
    description: str
    train: list[ImageRecord]
    validation: list[ImageRecord]
    test: list[ImageRecord]
    subsets: dict[str, dict[str, Any]] = field(default_factory=dict)
    seed: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "description": self.description,
            "train": len(self.train),
            "validation": len(self.validation),
            "test": len(self.test),
            "subsets": self.subsets,
            "seed": self.seed,
        }


@dataclass
class PrepareReport:
    """What prepare did; stored as prepare.json."""

    labels: list[dict]
    train_images: int = 0
    validation_images: int = 0
    test_images: int = 0
    train_shards: int = 0
    validation_shards: int = 0
    test_shards: int = 0
    objects: int = 0
    images_selected: int = 0
    split: dict[str, Any] = field(default_factory=dict)
    dropped_images: Counter = field(default_factory=Counter)
    dropped_shapes: Counter = field(default_factory=Counter)
    clipped_shapes: int = 0
    labels_left_out: list[dict] = field(default_factory=list)
    skipped_images: list[dict] = field(default_factory=list)
    with_masks: bool = False
    validation_fraction: float = 0.1
    keep_empty_labels: bool = False
    max_dropped_images: float = MAX_DROPPED_IMAGES
    fingerprint: str = ""
    shapes_dropped_by_label: dict[str, Counter] = field(default_factory=dict)  # says why a label is left out

    def to_dict(self) -> dict:
        return {
            "version": PREPARE_VERSION,
            "labels": self.labels,
            "train_images": self.train_images,
            "validation_images": self.validation_images,
            "test_images": self.test_images,
            "train_shards": self.train_shards,
            "validation_shards": self.validation_shards,
            "test_shards": self.test_shards,
            "objects": self.objects,
            "images_selected": self.images_selected,
            "split": self.split,
            "dropped_images": dict(self.dropped_images),
            "dropped_shapes": dict(self.dropped_shapes),
            "clipped_shapes": self.clipped_shapes,
            "labels_left_out": self.labels_left_out,
            "skipped_images": self.skipped_images,
            "with_masks": self.with_masks,
            "validation_fraction": self.validation_fraction,
            "keep_empty_labels": self.keep_empty_labels,
            "max_dropped_images": self.max_dropped_images,
            "fingerprint": self.fingerprint,
        }

    def drop_shape(self, label: str, reason: str) -> None:
        self.dropped_shapes[reason] += 1
        self.shapes_dropped_by_label.setdefault(label, Counter())[reason] += 1

    def drop_image(self, record: ImageRecord, reason: str, detail: str) -> None:
        self.dropped_images[reason] += 1
        self.skipped_images.append({"image": record.key, "reason": detail})


# ---------------------------------------------------------------------------------------------
# Reading the dataset
# ---------------------------------------------------------------------------------------------


def dataset_folder(uri: str) -> str:
    """The dataset folder for either its URI or its manifest's (what the export task returns)."""
    suffix = "/" + MANIFEST_NAME
    return uri[: -len(suffix)] if uri.endswith(suffix) else uri


def read_manifest(dataset_uri: str) -> Manifest:
    dataset_uri = dataset_folder(dataset_uri)
    uri = storage.join(dataset_uri, MANIFEST_NAME)
    if not storage.exists(uri):
        raise DatasetError(
            f"no {MANIFEST_NAME} in {dataset_uri}: the dataset is missing or its export did not finish; "
            "run the export step again"
        )
    return Manifest.from_json(storage.read_text(uri))


def stage_archives(dataset_uri: str, manifest: Manifest, local_dir: Path) -> list[tuple[Archive, Path]]:
    """Copy the archives to local disk (zip needs random access) and check their hashes."""
    staged = []
    for archive in manifest.archives:
        uri = storage.join(dataset_uri, archive.path)
        if storage.is_local(uri):
            path = Path(storage.split_uri(uri)[1])
        else:
            path = storage.get_file(uri, local_dir / archive.path)
        if not path.exists():
            raise DatasetError(f"archive {archive.path} listed in the manifest is missing from {dataset_uri}")
        if archive.sha256 and _sha256(path) != archive.sha256.removeprefix("sha256:"):
            raise DatasetError(f"archive {archive.path} does not match its sha256 in the manifest; re-export")
        staged.append((archive, path))
    return staged


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_archive(archive: Archive, path: Path, report: PrepareReport) -> list[ImageRecord]:
    """The selected images of one export zip; those the zip lacks are dropped and listed.

    Tags, points, polylines... (not detection shapes) of the kept images are counted here, per
    type and per label; a dropped image counts once, as an image, not by its shapes.
    """
    with zipfile.ZipFile(path) as zf:
        _, images = read_labels_and_images(zf)
    records = []
    for image in iter_selected(images, archive.frame_names):
        record = _record(archive, path, image)
        if not image.member:
            report.drop_image(record, "image_not_in_zip", "not in the zip: the annotations name it")
            continue
        for shape in image.others:
            report.drop_shape(shape.label, f"unsupported_{shape.type}")
        records.append(record)
    return records


def _record(archive: Archive, path: Path, image: ArchiveImage) -> ImageRecord:
    return ImageRecord(
        key=f"{archive.path}/{image.key}",
        archive=path,
        member=image.member,
        name=image.name,
        subset=image.subset,
        shapes=image.shapes,
        width=image.width,
        height=image.height,
    )


def measure(records: list[ImageRecord], known_labels: set[str], report: PrepareReport) -> list[ImageRecord]:
    """Decode every image once (corrupt ones are dropped) and turn its shapes into instances.

    Runs before the split and before any TFRecord is written, so what will be dropped is known
    (and the run can be refused) before anything costly happens.
    """
    usable = []
    zips: dict[Path, zipfile.ZipFile] = {}
    try:
        for record in records:
            zf = zips.get(record.archive)
            if zf is None:  # once per archive: opening a zip parses its whole directory
                zf = zips[record.archive] = zipfile.ZipFile(record.archive)
            try:
                record.width, record.height, record.format = _image_size(zf.read(record.member))
            except (OSError, ValueError, SyntaxError) as error:
                report.drop_image(record, "cannot_decode", f"cannot decode: {error}")
                continue
            record.instances = [
                instance
                for shape in record.shapes
                if (instance := _instance(shape, record.width, record.height, known_labels, report))
            ]
            record.shapes = []  # the instances hold what is needed now
            usable.append(record)
    finally:
        for zf in zips.values():
            zf.close()
    return usable


def _instance(
    shape: Shape, width: int, height: int, known_labels: set[str], report: PrepareReport
) -> Instance | None:
    """One shape as a training instance in pixels of the decoded image, or None (counted why)."""
    if shape.label not in known_labels:
        report.drop_shape(shape.label, "unknown_label")
        return None
    instance = _geometry(shape, width, height)
    if instance is None:
        report.drop_shape(shape.label, _DEGENERATE.get(shape.type, f"degenerate_{shape.type}"))
        return None
    clipped = _clip(instance.box, width, height)
    if clipped is None:
        report.drop_shape(shape.label, "outside_image")
        return None
    if any(abs(a - b) > 1e-6 for a, b in zip(clipped, instance.box, strict=True)):
        report.clipped_shapes += 1
    instance.box = clipped
    return instance


_DEGENERATE = {"rectangle": "degenerate_box", "mask": "empty_mask"}


def _geometry(shape: Shape, width: int, height: int) -> Instance | None:
    """Box, outline or mask of a detection shape; None when its geometry is degenerate."""
    if shape.type == "rectangle":
        x0, y0, x1, y1 = shape.points
        if x1 - x0 < MIN_BOX_SIDE or y1 - y0 < MIN_BOX_SIDE:
            return None
        if shape.rotation:
            corners = _rotated_corners((x0, y0, x1, y1), shape.rotation)
            return Instance(shape.label, _bounds(corners), polygons=[corners])
        return Instance(shape.label, (x0, y0, x1, y1))
    if shape.type == "polygon":
        rings = [ring for ring in (shape.polygons or [shape.points]) if len(ring) >= 6]
        if not rings:
            return None
        return Instance(shape.label, _bounds([v for ring in rings for v in ring]), polygons=rings)
    if shape.type == "ellipse":
        cx, cy, rx, ry = shape.points
        if rx <= 0 or ry <= 0:
            return None
        outline = _ellipse(cx, cy, rx, ry, shape.rotation)
        return Instance(shape.label, _bounds(outline), polygons=[outline])
    mask = _decode_mask(shape.mask or {}, width, height)
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return None
    return Instance(shape.label, (xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0), mask=mask)


def _decode_mask(mask: dict, width: int, height: int) -> np.ndarray:
    """A full-image 0/1 mask from COCO's RLE or CVAT's brush RLE."""
    if "counts" in mask:
        from pycocotools import mask as mask_utils

        rle_height, rle_width = mask["size"]
        rle = mask
        if isinstance(mask.get("counts"), list):
            rle = mask_utils.frPyObjects(mask, rle_height, rle_width)
        decoded = mask_utils.decode(rle).astype(np.uint8)
        full = np.zeros((height, width), dtype=np.uint8)
        h, w = min(height, decoded.shape[0]), min(width, decoded.shape[1])
        full[:h, :w] = decoded[:h, :w]
        return full
    return _cvat_mask(mask, width, height)


def _cvat_mask(mask: dict, width: int, height: int) -> np.ndarray:
    """CVAT's brush mask: run lengths (alternating 0/1, row-major) of a box at (left, top)."""
    counts = [int(v) for v in str(mask.get("rle", "")).replace(" ", "").split(",") if v]
    left, top = int(mask.get("left", 0)), int(mask.get("top", 0))
    box_w, box_h = int(mask.get("width", 0)), int(mask.get("height", 0))
    flat = np.zeros(box_w * box_h, dtype=np.uint8)
    position, value = 0, 0
    for count in counts:
        flat[position : position + count] = value
        position += count
        value = 1 - value
    full = np.zeros((height, width), dtype=np.uint8)
    crop = flat.reshape(box_h, box_w)[: max(0, height - top), : max(0, width - left)]
    full[top : top + crop.shape[0], left : left + crop.shape[1]] = crop
    return full


def _rotated_corners(box: tuple[float, float, float, float], degrees: float) -> list[float]:
    """The four corners of ``box`` rotated clockwise by ``degrees`` about its centre (CVAT's sense)."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    angle = math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    points = []
    for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1)):
        dx, dy = x - cx, y - cy
        points += [cx + dx * cos - dy * sin, cy + dx * sin + dy * cos]
    return points


def _ellipse(cx: float, cy: float, rx: float, ry: float, degrees: float) -> list[float]:
    """A polygon of ``ELLIPSE_VERTICES`` points on the ellipse, rotated like CVAT's."""
    angle = math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    points = []
    for i in range(ELLIPSE_VERTICES):
        t = 2 * math.pi * i / ELLIPSE_VERTICES
        dx, dy = rx * math.cos(t), ry * math.sin(t)
        points += [cx + dx * cos - dy * sin, cy + dx * sin + dy * cos]
    return points


def _bounds(points: list[float]) -> tuple[float, float, float, float]:
    xs, ys = points[0::2], points[1::2]
    return min(xs), min(ys), max(xs), max(ys)


def _image_size(data: bytes) -> tuple[int, int, str]:
    """(width, height, format) from the header after a full decode check; raises on corrupt data."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()  # decodes the whole image: truncated or corrupt files fail here
        return image.width, image.height, (image.format or "").lower()


def _clip(box: tuple[float, float, float, float], width: int, height: int) -> tuple[float, ...] | None:
    x0, y0, x1, y1 = box
    x0, x1 = sorted((min(max(x0, 0.0), width), min(max(x1, 0.0), width)))
    y0, y1 = sorted((min(max(y0, 0.0), height), min(max(y1, 0.0), height)))
    if x1 - x0 < MIN_BOX_SIDE or y1 - y0 < MIN_BOX_SIDE:
        return None
    return x0, y0, x1, y1


# ---------------------------------------------------------------------------------------------
# What is kept: images, split, classes
# ---------------------------------------------------------------------------------------------


def check_validation_fraction(fraction: float) -> None:
    """Refuse a fraction that asks for an empty split (the CLI calls this before TensorFlow loads)."""
    if not (isinstance(fraction, (int, float)) and 0.0 < fraction < 1.0):
        raise DatasetError(
            f"validation fraction {fraction} would leave the validation or training split empty; "
            "use a value between 0 and 1 (the default is 0.1)"
        )


def check_dropped_images(report: dict[str, Any], limit: float) -> None:
    """Refuse the dataset when more than ``limit`` of its selected images were dropped."""
    dropped = sum(report.get("dropped_images", {}).values())
    selected = report.get("images_selected", 0)
    if not selected or dropped / selected <= limit:
        return
    reasons = ", ".join(
        f"{n} {_IMAGE_REASONS.get(k, k)}" for k, n in sorted(report["dropped_images"].items())
    )
    listed = [entry["image"] for entry in report.get("skipped_images", [])[:5]]
    raise DatasetError(
        f"prepare dropped {dropped} of {selected} images ({dropped / selected:.0%}), more than "
        f"max_dropped_images={limit:g}: {reasons} (e.g. {', '.join(listed)}). Export again with "
        "images (and check the task's files), or raise max_dropped_images in the training arguments"
    )


_IMAGE_REASONS = {"image_not_in_zip": "not in the zip", "cannot_decode": "do not decode"}


def split(records: list[ImageRecord], fraction: float, seed: str = "") -> SplitPlan:
    """Train, validation and test images: by CVAT subsets when present, else at random (see above)."""
    check_validation_fraction(fraction)
    if len(records) < 2:
        raise DatasetError(
            f"the dataset has {len(records)} usable image(s); at least 2 are needed "
            "(one to train on, one to validate with). Annotate and finish more jobs"
        )
    roles = {id(r): subset_role(r.subset) or "train" for r in records}
    if not any(subset_role(r.subset) for r in records):
        train, validation = _random_split(records, fraction, seed)
        percent = round(100 * fraction)
        description = f"random {100 - percent}/{percent} seeded by fingerprint {seed}"
        return SplitPlan("random", description, train, validation, [], seed=seed)
    chosen = {role: [r for r in records if roles[id(r)] == role] for role in ("train", "validation", "test")}
    subsets: dict[str, dict[str, Any]] = {}
    for record in records:
        entry = subsets.setdefault(record.subset or "(none)", {"role": roles[id(record)], "images": 0})
        entry["images"] += 1
    order = {"train": 0, "validation": 1, "test": 2}
    parts = [
        f"{name} {entry['images']}" + ("" if subset_role(name) else f" ({entry['role']})")
        for name, entry in sorted(subsets.items(), key=lambda item: (order[item[1]["role"]], item[0]))
    ]
    description = "subsets: " + " / ".join(parts)
    train, validation = chosen["train"], chosen["validation"]
    if not train:
        raise DatasetError(
            f"the export's {description} leave nothing to train on; put the training images in a "
            "Train subset (or in none) in CVAT"
        )
    if not validation:
        if len(train) < 2:
            raise DatasetError(f"the export's {description} leave too few images to train and validate on")
        train, validation = _random_split(train, fraction, seed)
        description += (
            f"; validation: {len(validation)} drawn at random from training, seeded by fingerprint {seed}"
        )
    return SplitPlan("subsets", description, train, validation, chosen["test"], subsets, seed)


def _random_split(
    records: list[ImageRecord], fraction: float, seed: str
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """The lowest SHA-256(seed, key) ranks validate; deterministic for a dataset and never empty."""
    ranked = sorted(records, key=lambda r: hashlib.sha256(f"{seed}\n{r.key}".encode()).hexdigest())
    count = min(len(records) - 1, max(1, round(fraction * len(records))))
    chosen = {id(r) for r in ranked[:count]}
    return [r for r in records if id(r) not in chosen], [r for r in records if id(r) in chosen]


_NOT_DETECTION_TYPES = ("tag", "skeleton", "points")


def choose_classes(
    manifest: Manifest, plan: SplitPlan, dropped_by_label: dict[str, Counter], keep_empty_labels: bool
) -> tuple[list[dict], list[dict]]:
    """(classes, labels left out): a label is a class when the training split has its shapes.

    ``dropped_by_label`` (the report's per-label drop counts) says why a label was left out:
    "only tag" or "only points" for labels used only that way, the geometry otherwise. With
    ``keep_empty_labels`` every label but tag, skeleton and points labels is a class, shapes or
    not (the rule before subsets and counting existed).
    """
    in_train = Counter(i.label for r in plan.train for i in r.instances)
    elsewhere = Counter(i.label for r in (*plan.validation, *plan.test) for i in r.instances)
    classes, left_out = [], []
    for label in sorted(manifest.labels, key=lambda label: (label.id, label.name)):
        if label.type in _NOT_DETECTION_TYPES:
            reason = f"{label.type} label"
        elif in_train[label.name] or keep_empty_labels:
            classes.append({"id": len(classes) + 1, "name": label.name, "cvat_id": label.id})
            continue
        elif elsewhere[label.name]:
            reason = "shapes only outside the training split"
        elif dropped := dropped_by_label.get(label.name):
            unsupported = sorted(
                k.removeprefix("unsupported_") for k in dropped if k.startswith("unsupported_")
            )
            if len(unsupported) == len(dropped):
                reason = "only " + ", ".join(unsupported)  # e.g. "only tag", "only points, polyline"
            else:
                reason = "every shape dropped: " + _counts(dropped)
        else:
            reason = "no shapes"
        left_out.append({"name": label.name, "cvat_id": label.id, "reason": reason})
    return classes, left_out


# ---------------------------------------------------------------------------------------------
# Writing TFRecords
# ---------------------------------------------------------------------------------------------


def _mask_png(instance: Instance, width: int, height: int) -> bytes:
    """A full-image 0/1 PNG (the Model Garden's instance mask encoding)."""
    if instance.mask is not None:
        mask = instance.mask
    elif instance.polygons:
        from pycocotools import mask as mask_utils

        rles = mask_utils.frPyObjects(instance.polygons, height, width)
        mask = np.amax(mask_utils.decode(rles), axis=2).astype(np.uint8)
    else:
        mask = np.zeros((height, width), dtype=np.uint8)
        x0, y0, x1, y1 = (int(round(v)) for v in instance.box)
        mask[y0:y1, x0:x1] = 1
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, format="PNG")
    return buffer.getvalue()


def build_example(
    record: ImageRecord, data: bytes, source_id: int, label_ids: dict[str, int], with_masks: bool
):
    """The tf.train.Example the Model Garden's TfExampleDecoder reads (boxes normalised).

    ``record.instances`` are final here: clipped, and only of labels that are classes.
    """
    import tensorflow as tf

    width, height = record.width, record.height
    instances = record.instances
    boxes = [i.box for i in instances]
    classes = [label_ids[i.label] for i in instances]
    names = {i: name for name, i in label_ids.items()}

    def floats(values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))

    def ints(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))

    def byts(values):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))

    feature = {
        "image/encoded": byts([data]),
        "image/format": byts([record.format.encode()]),
        "image/filename": byts([record.name.encode()]),
        "image/source_id": byts([str(source_id).encode()]),  # numeric: the COCO evaluator casts it
        "image/height": ints([height]),
        "image/width": ints([width]),
        "image/object/bbox/xmin": floats([b[0] / width for b in boxes]),
        "image/object/bbox/ymin": floats([b[1] / height for b in boxes]),
        "image/object/bbox/xmax": floats([b[2] / width for b in boxes]),
        "image/object/bbox/ymax": floats([b[3] / height for b in boxes]),
        "image/object/class/label": ints(classes),
        "image/object/class/text": byts([names[c].encode() for c in classes]),
        "image/object/area": floats([(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]),
        "image/object/is_crowd": ints([0] * len(classes)),
    }
    if with_masks:
        feature["image/object/mask"] = byts([_mask_png(i, width, height) for i in instances])
    return tf.train.Example(features=tf.train.Features(feature=feature))


def write_split(
    prefix: str,
    records: list[ImageRecord],
    folder: Path,
    label_ids: dict[str, int],
    with_masks: bool,
    first_id: int,
) -> int:
    """Write one split's shards (``{prefix}-0000i-of-0000N.tfrecord``); return the shard count."""
    import tensorflow as tf

    shards = max(1, math.ceil(len(records) / SHARD_IMAGES))
    writers = [
        tf.io.TFRecordWriter(str(folder / f"{prefix}-{i:05d}-of-{shards:05d}.tfrecord"))
        for i in range(shards)
    ]
    zips: dict[Path, zipfile.ZipFile] = {}
    try:
        for index, record in enumerate(records):
            zf = zips.get(record.archive)
            if zf is None:
                zf = zips[record.archive] = zipfile.ZipFile(record.archive)
            example = build_example(record, zf.read(record.member), first_id + index, label_ids, with_masks)
            writers[index % shards].write(example.SerializeToString())
    finally:
        for writer in writers:
            writer.close()
        for zf in zips.values():
            zf.close()
    return shards


def prepare(
    dataset_uri: str,
    data_dir: Path,
    *,
    validation_fraction: float = 0.1,
    with_masks: bool = False,
    keep_empty_labels: bool = False,
    max_dropped_images: float = MAX_DROPPED_IMAGES,
) -> PrepareReport:
    """Convert the dataset at ``dataset_uri`` into ``data_dir``; see the module docstring."""
    check_validation_fraction(validation_fraction)
    dataset_uri = dataset_folder(dataset_uri)
    manifest = read_manifest(dataset_uri)
    if not manifest.labels:
        raise DatasetError("the manifest lists no labels; add labels to the CVAT task or project")
    data_dir.mkdir(parents=True, exist_ok=True)
    report = PrepareReport(
        labels=[],
        with_masks=with_masks,
        validation_fraction=validation_fraction,
        keep_empty_labels=keep_empty_labels,
        max_dropped_images=max_dropped_images,
        fingerprint=manifest.fingerprint,
    )
    records: list[ImageRecord] = []
    for archive, path in stage_archives(dataset_uri, manifest, data_dir / "_archives"):
        records += read_archive(archive, path, report)
    report.images_selected = len(records) + report.dropped_images["image_not_in_zip"]
    records = measure(records, {label.name for label in manifest.labels}, report)
    check_dropped_images(report.to_dict(), max_dropped_images)  # before any TFRecord, before training
    plan = split(records, validation_fraction, manifest.fingerprint)
    report.split = plan.to_dict()
    report.labels, report.labels_left_out = choose_classes(
        manifest, plan, report.shapes_dropped_by_label, keep_empty_labels
    )
    if not report.labels:
        raise DatasetError(
            "no label has a shape in the training split, so there is nothing to detect: "
            + "; ".join(f"{e['name']}: {e['reason']}" for e in report.labels_left_out)
        )
    label_ids = {entry["name"]: entry["id"] for entry in report.labels}
    first_id = 1
    for (name, prefix), chosen in zip(SPLITS, (plan.train, plan.validation, plan.test), strict=True):
        for record in chosen:
            kept = [i for i in record.instances if i.label in label_ids]
            report.dropped_shapes["label_left_out"] += len(record.instances) - len(kept)
            record.instances = kept
            report.objects += len(kept)
        if chosen:
            shards = write_split(prefix, chosen, data_dir, label_ids, with_masks, first_id)
            setattr(report, f"{name}_shards", shards)
        setattr(report, f"{name}_images", len(chosen))
        first_id += len(chosen)
    report.dropped_shapes = +report.dropped_shapes  # no zero counts
    log.info("prepare: %s", summary_line(report.to_dict()))
    staged = data_dir / "_archives"
    if staged.exists():
        shutil.rmtree(staged, ignore_errors=True)
    (data_dir / "label_map.json").write_text(json.dumps({"labels": report.labels}, indent=2))
    (data_dir / "prepare.json").write_text(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    return report


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """What the trainer's result, the model card and the email say about the data (see prepare.json).

    Keys: ``split`` (mode, description, counts per split and subset), ``images`` (selected,
    train, validation, test), ``dropped_images`` and ``dropped_shapes`` (count per reason),
    ``clipped_shapes``, ``labels_left_out`` (name, reason), ``dropped_image_names`` (the first
    few), ``classes`` (how many labels the model detects).
    """
    return {
        "split": report.get("split", {}),
        "images": {
            "selected": report.get("images_selected", 0),
            "train": report.get("train_images", 0),
            "validation": report.get("validation_images", 0),
            "test": report.get("test_images", 0),
        },
        "objects": report.get("objects", 0),
        "classes": len(report.get("labels", [])),
        "dropped_images": report.get("dropped_images", {}),
        "dropped_image_names": [e["image"] for e in report.get("skipped_images", [])[:LISTED_IMAGES]],
        "dropped_shapes": report.get("dropped_shapes", {}),
        "clipped_shapes": report.get("clipped_shapes", 0),
        "labels_left_out": report.get("labels_left_out", []),
    }


def summary_line(report: dict[str, Any]) -> str:
    """One line for a task log: the split, and every drop with its reason (or that none happened)."""
    data = summary(report)
    images = data["images"]
    parts = [
        f"{images['train']} train / {images['validation']} validation / {images['test']} test images "
        f"of {images['selected']} selected, {data['objects']} objects, {data['classes']} classes",
        data["split"].get("description", ""),
    ]
    dropped_images = sum(data["dropped_images"].values())
    parts.append(
        f"dropped images: {dropped_images}"
        + (f" ({_counts(data['dropped_images'])})" if dropped_images else "")
    )
    parts.append(
        f"dropped shapes: {sum(data['dropped_shapes'].values())}"
        + (f" ({_counts(data['dropped_shapes'])})" if data["dropped_shapes"] else "")
        + f", clipped to the image: {data['clipped_shapes']}"
    )
    if data["labels_left_out"]:
        parts.append(
            "labels left out: " + ", ".join(f"{e['name']} ({e['reason']})" for e in data["labels_left_out"])
        )
    return "; ".join(part for part in parts if part)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{key} {value}" for key, value in sorted(counts.items()))


def is_prepared(
    data_dir: Path,
    with_masks: bool,
    validation_fraction: float,
    keep_empty_labels: bool = False,
    max_dropped_images: float = MAX_DROPPED_IMAGES,
) -> dict | None:
    """The stored report when ``data_dir`` already holds a complete, compatible preparation.

    A stored preparation that dropped more images than ``max_dropped_images`` now allows is
    refused (DatasetError), as a fresh one would be.
    """
    marker = data_dir / "prepare.json"
    if not marker.exists():
        return None
    report = json.loads(marker.read_text())
    if report.get("version") != PREPARE_VERSION or (with_masks and not report.get("with_masks")):
        return None
    if not math.isclose(report.get("validation_fraction", -1), validation_fraction):
        return None
    if report.get("keep_empty_labels") != keep_empty_labels:
        return None
    check_dropped_images(report, max_dropped_images)
    return report
