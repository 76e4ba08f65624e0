"""prepare: a dataset folder (manifest.json + CVAT export zips) -> sharded TFRecords + label map.

Output, under ``{output}/data/``: ``train-00000-of-0000N.tfrecord``, ``val-...``,
``label_map.json`` and ``prepare.json`` (counts and rules applied; written last, so its presence
means the stage is complete and a retried pod skips it).

Rules, applied the same way to both export formats:

* Only the frames the manifest lists (``Archive.frame_names``) count; an archive whose
  ``frame_names`` is empty contributes all its images (a zip imported by hand).
* Labels get contiguous ids 1..N (0 is background in the Model Garden) in the order of the
  manifest's labels by CVAT id; names are kept. Shapes whose label is not in the manifest are
  dropped and counted.
* Images without shapes are kept: they teach the detector what background looks like.
* Shapes partly outside the image are clipped to it; a shape whose clipped box is under one
  pixel wide or high (zero area, or wholly outside) is dropped and counted.
* Rotated boxes (CVAT's ``rotation``) become the axis-aligned box enclosing the rotated one;
  their mask is the rotated rectangle.
* Polylines, points, ellipses, cuboids, skeletons and tags are not detection targets: dropped
  and counted per type.
* An image that does not decode (corrupt, truncated, not an image) is skipped and listed; the
  run fails only if no trainable image remains.
* Image bytes pass through unchanged (no re-encoding); width and height come from the image
  header, not from the annotation file.
* Split: each image's key (archive path + frame name) is hashed with SHA-256; the lowest
  hashes go to validation, ``max(1, round(fraction * images))`` of them. Deterministic, stable
  when images are added, and never empty.
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from xml.etree import ElementTree as ET

import numpy as np
from PIL import Image

from airflow_cvat.manifest import MANIFEST_NAME, Archive, Manifest
from airflow_cvat.trainer import storage

log = logging.getLogger(__name__)

SHARD_IMAGES = 512
"""Images per TFRecord shard: a few shards let several readers interleave without tiny files."""
PREPARE_VERSION = 1
MIN_BOX_SIDE = 1.0


class DatasetError(ValueError):
    """The dataset cannot be used; the message says why and what to do."""


@dataclass
class Instance:
    """One object: label name, box (x0, y0, x1, y1) in pixels, outline polygons or an RLE mask."""

    label: str
    box: tuple[float, float, float, float]
    polygons: list[list[float]] = field(default_factory=list)
    mask: np.ndarray | None = None  # full-image 0/1 mask (CVAT brush masks)


@dataclass
class ImageRecord:
    """One image of the dataset and its objects (image bytes read lazily from the zip)."""

    key: str
    archive: Path
    member: str
    name: str
    instances: list[Instance]


@dataclass
class PrepareReport:
    """What prepare did; stored as prepare.json."""

    labels: list[dict]
    train_images: int = 0
    validation_images: int = 0
    train_shards: int = 0
    validation_shards: int = 0
    objects: int = 0
    dropped: Counter = field(default_factory=Counter)
    skipped_images: list[dict] = field(default_factory=list)
    with_masks: bool = False
    validation_fraction: float = 0.1
    fingerprint: str = ""

    def to_dict(self) -> dict:
        return {
            "version": PREPARE_VERSION,
            "labels": self.labels,
            "train_images": self.train_images,
            "validation_images": self.validation_images,
            "train_shards": self.train_shards,
            "validation_shards": self.validation_shards,
            "objects": self.objects,
            "dropped": dict(self.dropped),
            "skipped_images": self.skipped_images,
            "with_masks": self.with_masks,
            "validation_fraction": self.validation_fraction,
            "fingerprint": self.fingerprint,
        }


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


def read_archive(archive: Archive, path: Path, dropped: Counter) -> list[ImageRecord]:
    """The counted images of one export zip, whichever of the two formats it is."""
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        if "annotations.xml" in names:
            records = _read_cvat_xml(zf, path, dropped)
        else:
            coco = sorted(n for n in names if n.startswith("annotations/") and n.endswith(".json"))
            if not coco:
                raise DatasetError(
                    f"archive {archive.path} is neither a COCO 1.0 nor a CVAT for images 1.1 export "
                    "(no annotations/*.json and no annotations.xml)"
                )
            records = [r for member in coco for r in _read_coco(zf, member, path, dropped)]
    wanted = set(archive.frame_names)
    if wanted:
        stems = {PurePosixPath(n).stem for n in wanted}
        records = [r for r in records if r.name in wanted or PurePosixPath(r.name).stem in stems]
    for record in records:
        record.key = f"{archive.path}/{record.name}"
    return records


def _find_member(names: set[str], prefixes: tuple[str, ...], name: str) -> str | None:
    for prefix in prefixes:
        if prefix + name in names:
            return prefix + name
    suffix = "/" + name
    return next((n for n in names if n.endswith(suffix)), None)


def _read_coco(zf: zipfile.ZipFile, member: str, path: Path, dropped: Counter) -> Iterator[ImageRecord]:
    document = json.loads(zf.read(member))
    subset = PurePosixPath(member).stem.removeprefix("instances_")
    categories = {c["id"]: c["name"] for c in document.get("categories", [])}
    by_image: dict[int, list[Instance]] = {}
    for ann in document.get("annotations", []):
        instance = _coco_instance(ann, categories, dropped)
        if instance is not None:
            by_image.setdefault(ann["image_id"], []).append(instance)
    names = set(zf.namelist())
    for image in document.get("images", []):
        file_name = image["file_name"]
        found = _find_member(names, (f"images/{subset}/", "images/"), file_name)
        if found is None:
            dropped["image_not_in_zip"] += 1
            continue
        yield ImageRecord("", path, found, file_name, by_image.get(image["id"], []))


def _coco_instance(ann: dict, categories: dict[int, str], dropped: Counter) -> Instance | None:
    label = categories.get(ann.get("category_id"))
    if label is None:
        dropped["unknown_category"] += 1
        return None
    x, y, w, h = (float(v) for v in ann["bbox"])
    box = (x, y, x + w, y + h)
    rotation = float((ann.get("attributes") or {}).get("rotation", 0.0) or 0.0)
    segmentation = ann.get("segmentation") or []
    if isinstance(segmentation, dict):  # RLE: CVAT writes masks this way
        return Instance(label, box, mask=_decode_rle(segmentation))
    polygons = [list(map(float, p)) for p in segmentation if len(p) >= 6]
    if rotation and not polygons:
        polygons = [_rotated_corners(box, rotation)]
        box = _bounds(polygons[0])
    return Instance(label, box, polygons=polygons)


def _decode_rle(segmentation: dict) -> np.ndarray:
    from pycocotools import mask as mask_utils

    height, width = segmentation["size"]
    rle = segmentation
    if isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    return mask_utils.decode(rle).astype(np.uint8)


def _read_cvat_xml(zf: zipfile.ZipFile, path: Path, dropped: Counter) -> Iterator[ImageRecord]:
    root = ET.fromstring(zf.read("annotations.xml"))
    names = set(zf.namelist())
    records = []
    for image in root.iter("image"):
        name = image.get("name", "")
        member = _find_member(names, ("images/",), name)
        if member is None:
            dropped["image_not_in_zip"] += 1
            continue
        height, width = int(image.get("height", 0)), int(image.get("width", 0))
        instances = [i for el in image for i in [_xml_instance(el, width, height, dropped)] if i is not None]
        records.append(ImageRecord("", path, member, name, instances))
    return records


def _xml_instance(element: ET.Element, width: int, height: int, dropped: Counter) -> Instance | None:
    label = element.get("label", "")
    if element.tag == "box":
        box = tuple(float(element.get(k, 0)) for k in ("xtl", "ytl", "xbr", "ybr"))
        rotation = float(element.get("rotation", 0) or 0)
        if rotation:
            corners = _rotated_corners(box, rotation)  # type: ignore[arg-type]
            return Instance(label, _bounds(corners), polygons=[corners])
        return Instance(label, box)  # type: ignore[arg-type]
    if element.tag == "polygon":
        points = [float(v) for pair in element.get("points", "").split(";") for v in pair.split(",")]
        if len(points) < 6:
            dropped["degenerate_polygon"] += 1
            return None
        return Instance(label, _bounds(points), polygons=[points])
    if element.tag == "mask":
        mask = _cvat_mask(element, width, height)
        ys, xs = np.nonzero(mask)
        if not len(xs):
            dropped["empty_mask"] += 1
            return None
        return Instance(label, (xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0), mask=mask)
    if element.tag != "tag":
        dropped[f"unsupported_{element.tag}"] += 1
    return None


def _cvat_mask(element: ET.Element, width: int, height: int) -> np.ndarray:
    """CVAT's brush mask: run lengths (alternating 0/1, row-major) of a box at (left, top)."""
    counts = [int(v) for v in element.get("rle", "").replace(" ", "").split(",") if v]
    left, top = int(element.get("left", 0)), int(element.get("top", 0))
    box_w, box_h = int(element.get("width", 0)), int(element.get("height", 0))
    flat = np.zeros(box_w * box_h, dtype=np.uint8)
    position, value = 0, 0
    for count in counts:
        flat[position : position + count] = value
        position += count
        value = 1 - value
    mask = np.zeros((height, width), dtype=np.uint8)
    crop = flat.reshape(box_h, box_w)[: max(0, height - top), : max(0, width - left)]
    mask[top : top + crop.shape[0], left : left + crop.shape[1]] = crop
    return mask


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


def _bounds(points: list[float]) -> tuple[float, float, float, float]:
    xs, ys = points[0::2], points[1::2]
    return min(xs), min(ys), max(xs), max(ys)


# ---------------------------------------------------------------------------------------------
# Writing TFRecords
# ---------------------------------------------------------------------------------------------


def label_map_for(manifest: Manifest) -> list[dict]:
    """Contiguous training ids 1..N for the manifest's labels (by CVAT id), names kept."""
    ordered = sorted(manifest.labels, key=lambda label: (label.id, label.name))
    usable = [label for label in ordered if label.type not in ("tag", "skeleton", "points")]
    return [{"id": i, "name": label.name, "cvat_id": label.id} for i, label in enumerate(usable, start=1)]


def check_validation_fraction(fraction: float) -> None:
    """Refuse a fraction that asks for an empty split (the CLI calls this before TensorFlow loads)."""
    if not (isinstance(fraction, (int, float)) and 0.0 < fraction < 1.0):
        raise DatasetError(
            f"validation fraction {fraction} would leave the validation or training split empty; "
            "use a value between 0 and 1 (the default is 0.1)"
        )


def split(records: list[ImageRecord], fraction: float) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Deterministic hash split; see the module docstring."""
    check_validation_fraction(fraction)
    if len(records) < 2:
        raise DatasetError(
            f"the dataset has {len(records)} usable image(s); at least 2 are needed "
            "(one to train on, one to validate with). Annotate and finish more jobs"
        )
    ranked = sorted(records, key=lambda r: hashlib.sha256(r.key.encode()).hexdigest())
    count = min(len(records) - 1, max(1, round(fraction * len(records))))
    validation = ranked[:count]
    chosen = {id(r) for r in validation}
    return [r for r in records if id(r) not in chosen], validation


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


def _mask_png(instance: Instance, box: tuple[float, ...], width: int, height: int) -> bytes:
    """A full-image 0/1 PNG (the Model Garden's instance mask encoding)."""
    if instance.mask is not None:
        mask = np.zeros((height, width), dtype=np.uint8)
        h, w = min(height, instance.mask.shape[0]), min(width, instance.mask.shape[1])
        mask[:h, :w] = instance.mask[:h, :w]
    elif instance.polygons:
        from pycocotools import mask as mask_utils

        rles = mask_utils.frPyObjects(instance.polygons, height, width)
        mask = np.amax(mask_utils.decode(rles), axis=2).astype(np.uint8)
    else:
        mask = np.zeros((height, width), dtype=np.uint8)
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        mask[y0:y1, x0:x1] = 1
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, format="PNG")
    return buffer.getvalue()


def build_example(
    record: ImageRecord,
    data: bytes,
    source_id: int,
    label_ids: dict[str, int],
    with_masks: bool,
    dropped: Counter,
):
    """The tf.train.Example the Model Garden's TfExampleDecoder reads (boxes normalised)."""
    import tensorflow as tf

    width, height, image_format = _image_size(data)
    boxes, classes, areas, masks = [], [], [], []
    for instance in record.instances:
        if instance.label not in label_ids:
            dropped["unknown_label"] += 1
            continue
        box = _clip(instance.box, width, height)
        if box is None:
            dropped["zero_area_or_outside"] += 1
            continue
        boxes.append(box)
        classes.append(label_ids[instance.label])
        areas.append((box[2] - box[0]) * (box[3] - box[1]))
        if with_masks:
            masks.append(_mask_png(instance, box, width, height))

    def floats(values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))

    def ints(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))

    def byts(values):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))

    feature = {
        "image/encoded": byts([data]),
        "image/format": byts([image_format.encode()]),
        "image/filename": byts([record.name.encode()]),
        "image/source_id": byts([str(source_id).encode()]),  # numeric: the COCO evaluator casts it
        "image/height": ints([height]),
        "image/width": ints([width]),
        "image/object/bbox/xmin": floats([b[0] / width for b in boxes]),
        "image/object/bbox/ymin": floats([b[1] / height for b in boxes]),
        "image/object/bbox/xmax": floats([b[2] / width for b in boxes]),
        "image/object/bbox/ymax": floats([b[3] / height for b in boxes]),
        "image/object/class/label": ints(classes),
        "image/object/class/text": byts([_name(label_ids, c).encode() for c in classes]),
        "image/object/area": floats(areas),
        "image/object/is_crowd": ints([0] * len(classes)),
    }
    if with_masks:
        feature["image/object/mask"] = byts(masks)
    return tf.train.Example(features=tf.train.Features(feature=feature)), len(classes)


def _name(label_ids: dict[str, int], class_id: int) -> str:
    return next(name for name, i in label_ids.items() if i == class_id)


def write_split(
    name: str,
    records: list[ImageRecord],
    folder: Path,
    label_ids: dict[str, int],
    with_masks: bool,
    report: PrepareReport,
    first_id: int,
) -> tuple[int, int]:
    """Write one split's shards; return (images written, shards). Corrupt images are skipped."""
    import tensorflow as tf

    shards = max(1, math.ceil(len(records) / SHARD_IMAGES))
    writers = [
        tf.io.TFRecordWriter(str(folder / f"{name}-{i:05d}-of-{shards:05d}.tfrecord")) for i in range(shards)
    ]
    written = 0
    zips: dict[Path, zipfile.ZipFile] = {}
    try:
        for index, record in enumerate(records):
            zf = zips.get(record.archive)
            if zf is None:  # once per archive: opening a zip parses its whole directory
                zf = zips[record.archive] = zipfile.ZipFile(record.archive)
            data = zf.read(record.member)
            try:
                example, objects = build_example(
                    record, data, first_id + index, label_ids, with_masks, report.dropped
                )
            except (OSError, ValueError, SyntaxError) as error:
                report.skipped_images.append({"image": record.key, "reason": f"cannot decode: {error}"})
                continue
            writers[written % shards].write(example.SerializeToString())
            written += 1
            report.objects += objects
    finally:
        for writer in writers:
            writer.close()
        for zf in zips.values():
            zf.close()
    return written, shards


def prepare(
    dataset_uri: str,
    data_dir: Path,
    *,
    validation_fraction: float = 0.1,
    with_masks: bool = False,
) -> PrepareReport:
    """Convert the dataset at ``dataset_uri`` into ``data_dir``; see the module docstring."""
    check_validation_fraction(validation_fraction)
    dataset_uri = dataset_folder(dataset_uri)
    manifest = read_manifest(dataset_uri)
    data_dir.mkdir(parents=True, exist_ok=True)
    labels = label_map_for(manifest)
    if not labels:
        raise DatasetError("the manifest lists no labels; add labels to the CVAT task or project")
    report = PrepareReport(labels=labels, with_masks=with_masks, validation_fraction=validation_fraction)
    report.fingerprint = manifest.fingerprint
    records: list[ImageRecord] = []
    for archive, path in stage_archives(dataset_uri, manifest, data_dir / "_archives"):
        records += read_archive(archive, path, report.dropped)
    train_records, validation_records = split(records, validation_fraction)
    label_ids = {entry["name"]: entry["id"] for entry in labels}
    report.train_images, report.train_shards = write_split(
        "train", train_records, data_dir, label_ids, with_masks, report, 1
    )
    report.validation_images, report.validation_shards = write_split(
        "val", validation_records, data_dir, label_ids, with_masks, report, len(train_records) + 1
    )
    if report.train_images == 0 or report.validation_images == 0:
        raise DatasetError(
            f"after skipping {len(report.skipped_images)} image(s) that do not decode, the "
            f"{'training' if report.train_images == 0 else 'validation'} split is empty; fix the images"
        )
    for key, value in sorted(report.dropped.items()):
        log.warning("prepare: dropped %d (%s)", value, key)
    staged = data_dir / "_archives"
    if staged.exists():
        shutil.rmtree(staged, ignore_errors=True)
    (data_dir / "label_map.json").write_text(json.dumps({"labels": labels}, indent=2))
    (data_dir / "prepare.json").write_text(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    return report


def is_prepared(data_dir: Path, with_masks: bool, validation_fraction: float) -> dict | None:
    """The stored report when ``data_dir`` already holds a complete, compatible preparation."""
    marker = data_dir / "prepare.json"
    if not marker.exists():
        return None
    report = json.loads(marker.read_text())
    if report.get("version") != PREPARE_VERSION or (with_masks and not report.get("with_masks")):
        return None
    if not math.isclose(report.get("validation_fraction", -1), validation_fraction):
        return None
    return report
