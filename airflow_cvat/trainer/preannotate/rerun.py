"""The rerun rule: which frames of a job get the model, so that running again adds no duplicates.

Per frame, from the job's annotations:

* a frame holding anything not made by a model (``source`` other than ``auto``: a person's
  shape, tag or track) is never touched: people's work wins, and boxes on top of it would be
  duplicates of another kind;
* a frame holding only ``auto`` shapes is left as it is (``existing="skip"``, the default: a
  retry after a crash resumes where the upload stopped), or its auto shapes are deleted and it
  is annotated again (``existing="replace"``: a newer model replaces an older one's suggestions);
* an empty frame is annotated.

CVAT's UI turns an ``auto`` shape a person edits into ``semi-auto``, so corrections count as
people's work.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from airflow_cvat.trainer.preannotate.shapes import AUTO


@dataclass
class FramePlan:
    """Which frames of a job get the model, and which auto shapes go first (replace mode)."""

    frames: list[int]
    replace: dict[int, list[dict[str, Any]]]  # frame -> auto shapes to delete before uploading
    skipped_annotated: int = 0  # frames holding people's work
    skipped_preannotated: int = 0  # frames already holding auto shapes (skip mode)
    skipped_deleted: int = 0


def plan_frames(
    frames: Iterable[int], annotations: dict[str, Any], deleted: set[int], existing: str
) -> FramePlan:
    """Apply the rerun rule of the module docstring to one job's frames."""
    human: set[int] = set()
    auto: dict[int, list[dict[str, Any]]] = {}
    for shape in annotations.get("shapes", []):
        if shape.get("source") == AUTO:
            auto.setdefault(shape["frame"], []).append(shape)
        else:
            human.add(shape["frame"])
    for tag in annotations.get("tags", []):
        if tag.get("source") != AUTO:
            human.add(tag["frame"])
    for track in annotations.get("tracks", []):
        human.update(s["frame"] for s in track.get("shapes", []))
        human.add(track.get("frame", -1))
    plan = FramePlan(frames=[], replace={})
    for frame in frames:
        if frame in deleted:
            plan.skipped_deleted += 1
        elif frame in human:
            plan.skipped_annotated += 1
        elif frame in auto and existing == "skip":
            plan.skipped_preannotated += 1
        else:
            plan.frames.append(frame)
            if frame in auto:
                plan.replace[frame] = auto[frame]
    return plan
