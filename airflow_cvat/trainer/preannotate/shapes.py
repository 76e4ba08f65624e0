"""Detections to CVAT shapes, in the frame's own pixels (pure: tested without TensorFlow or CVAT).

Boxes become rectangles ``[xtl, ytl, xbr, ybr]``; Mask R-CNN masks become polygons (default) or
CVAT masks, whichever the label accepts; every shape is marked ``source: "auto"``, which is how
a rerun tells a model's work from a person's (:mod:`.rerun`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from airflow_cvat.trainer.preannotate.labels import LabelMapping, LabelTarget

AUTO = "auto"


def box_to_pixels(box: Sequence[float], width: int, height: int) -> list[float]:
    """Normalised ``[ymin, xmin, ymax, xmax]`` -> CVAT's ``[xtl, ytl, xbr, ybr]`` inside the frame."""
    ymin, xmin, ymax, xmax = (min(max(float(v), 0.0), 1.0) for v in box)
    return [round(xmin * width, 2), round(ymin * height, 2), round(xmax * width, 2), round(ymax * height, 2)]


def paste_mask(mask: np.ndarray, rect: Sequence[float]) -> tuple[np.ndarray, int, int]:
    """A box-relative soft mask (e.g. 28x28) resized onto the box's pixels: (bool mask, x0, y0)."""
    from PIL import Image

    x0, y0 = math.floor(rect[0]), math.floor(rect[1])
    x1, y1 = max(math.ceil(rect[2]), x0 + 1), max(math.ceil(rect[3]), y0 + 1)
    soft = Image.fromarray(np.asarray(mask, dtype=np.float32), mode="F")
    resized = np.asarray(soft.resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR))
    return resized >= 0.5, x0, y0


def mask_to_polygon(bitmap: np.ndarray, x0: int, y0: int) -> list[float] | None:
    """The largest outer contour of a mask as CVAT polygon points; None if it has no area.

    Why the largest only: a CVAT polygon is one ring; a detection is one object, and stray
    specks of a thresholded mask are noise. OpenCV comes with the Model Garden (the trainer
    image has it); it is imported only for Mask R-CNN models.
    """
    import cv2

    contours, _ = cv2.findContours(bitmap.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    contour = max(contours, key=cv2.contourArea)
    contour = cv2.approxPolyDP(contour, 1.0, True)
    if len(contour) < 3:
        return None
    return [float(v) for x, y in contour[:, 0, :] for v in (x + x0, y + y0)]


def mask_to_rle(bitmap: np.ndarray, x0: int, y0: int) -> list[float] | None:
    """CVAT's mask ``points``: run lengths (starting with zeros) over the box, then the box.

    Same encoding as ``cvat_sdk.masks.encode_mask``, computed on the box only instead of a
    frame-sized bitmap per detection.
    """
    ys, xs = np.nonzero(bitmap)
    if xs.size == 0:
        return None
    left, top, right, bottom = int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
    flat = bitmap[top : bottom + 1, left : right + 1].ravel()
    (edges,) = np.diff(flat, prepend=[not flat[0]], append=[not flat[-1]]).nonzero()
    runs = np.diff(edges, prepend=[0]) if flat[0] else np.diff(edges)
    return [float(r) for r in runs] + [
        float(left + x0),
        float(top + y0),
        float(right + x0),
        float(bottom + y0),
    ]


@dataclass
class FrameResult:
    shapes: list[dict[str, Any]]
    per_label: Counter = field(default_factory=Counter)
    skipped_labels: Counter = field(default_factory=Counter)
    incompatible: Counter = field(default_factory=Counter)


def frame_shapes(
    outputs: dict[str, np.ndarray],
    index: int,
    frame: int,
    width: int,
    height: int,
    mapping: LabelMapping,
    classes: dict[int, str],
    threshold: float,
    masks: str = "polygon",
) -> FrameResult:
    """The CVAT shapes for image ``index`` of a model batch, in the frame's own pixels."""
    result = FrameResult(shapes=[])
    count = int(outputs["num_detections"][index])
    boxes, scores = outputs["detection_boxes"][index], outputs["detection_scores"][index]
    labels = outputs["detection_classes"][index]
    soft_masks = outputs.get("detection_masks")
    for k in range(min(count, len(scores))):
        score = float(scores[k])
        if score < threshold:
            continue
        class_id = int(labels[k])
        target = mapping.by_class.get(class_id)
        if target is None:
            result.skipped_labels[classes.get(class_id, f"class {class_id}")] += 1
            continue
        rect = box_to_pixels(boxes[k], width, height)
        if rect[2] - rect[0] < 1 or rect[3] - rect[1] < 1:
            continue  # under a pixel: nothing a person could see or correct
        mask = None if soft_masks is None or masks == "box" else soft_masks[index][k]
        shape = _shape(target, rect, mask, masks)
        if shape is None:
            result.incompatible[target.name] += 1
            continue
        shape_type, points = shape
        result.shapes.append(
            {
                "type": shape_type,
                "frame": frame,
                "label_id": target.id,
                "points": points,
                "source": AUTO,
                "score": round(score, 4),
                "occluded": False,
                "z_order": 0,
                "attributes": [],
            }
        )
        result.per_label[target.name] += 1
    return result


def _shape(
    target: LabelTarget, rect: list[float], mask: np.ndarray | None, masks: str
) -> tuple[str, list[float]] | None:
    """(type, points) the label accepts: the mask as asked, else the box; None if neither fits."""
    if mask is not None:
        wanted = "mask" if masks == "mask" else "polygon"
        for shape_type in (wanted, "polygon" if wanted == "mask" else "mask"):
            if target.accepts(shape_type):
                bitmap, x0, y0 = paste_mask(mask, rect)
                points = (mask_to_rle if shape_type == "mask" else mask_to_polygon)(bitmap, x0, y0)
                if points:
                    return shape_type, points
                break
    if target.accepts("rectangle"):
        return "rectangle", rect
    return None
