"""The counts of a run and the JSON summary built from them (the command's ``{"status": "ok"}``)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_cvat.envelope import OK

if TYPE_CHECKING:
    from airflow_cvat.preannotation_request import PreAnnotationRequest
    from airflow_cvat.trainer.preannotate.annotator import TaskPlan
    from airflow_cvat.trainer.preannotate.model import ModelFiles


@dataclass
class Totals:
    """Counts of one task's run (summed over tasks for the summary)."""

    jobs: list[int] = field(default_factory=list)
    frames: int = 0
    shapes: int = 0
    replaced: int = 0
    uploads: int = 0
    per_label: Counter = field(default_factory=Counter)
    skipped_labels: Counter = field(default_factory=Counter)
    incompatible: Counter = field(default_factory=Counter)
    skipped_frames: Counter = field(default_factory=Counter)
    seconds_download: float = 0.0
    seconds_inference: float = 0.0
    seconds_upload: float = 0.0


def task_summary(plan: TaskPlan) -> dict[str, Any]:
    t = plan.totals
    return {
        "task_id": int(plan.task.id),
        "jobs": t.jobs,
        "frames": t.frames,
        "shapes": t.shapes,
        "per_label": dict(sorted(t.per_label.items())),
        "skipped_labels": dict(sorted(t.skipped_labels.items())),
        "incompatible_labels": dict(sorted(t.incompatible.items())),
        "missing_labels": plan.mapping.missing,
        "skipped_frames": dict(sorted(t.skipped_frames.items())),
        "replaced_shapes": t.replaced,
        "uploads": t.uploads,
        "seconds_download": round(t.seconds_download, 3),
        "seconds_inference": round(t.seconds_inference, 3),
        "seconds_upload": round(t.seconds_upload, 3),
    }


def summarize(
    options: PreAnnotationRequest, model: ModelFiles, plans: list[TaskPlan], elapsed: float
) -> dict[str, Any]:
    """The JSON result: totals over tasks at the top (one task: that task's numbers), each task in
    ``tasks``."""
    tasks = [task_summary(plan) for plan in plans]

    def total(key: str) -> Any:
        return sum(t[key] for t in tasks)

    def merged(key: str) -> dict[str, int]:
        counter: Counter = Counter()
        for t in tasks:
            counter.update(t[key])
        return dict(sorted(counter.items()))

    frames = total("frames")
    summary: dict[str, Any] = {
        "status": OK,
        "task_ids": [t["task_id"] for t in tasks],
        "model": model.version_uri,
        "jobs": [job for t in tasks for job in t["jobs"]],
        "frames": frames,
        "shapes": total("shapes"),
        "per_label": merged("per_label"),
        "skipped_labels": merged("skipped_labels"),
        "incompatible_labels": merged("incompatible_labels"),
        "missing_labels": sorted({name for t in tasks for name in t["missing_labels"]}),
        "skipped_frames": merged("skipped_frames"),
        "replaced_shapes": total("replaced_shapes"),
        "uploads": total("uploads"),
        "threshold": options.threshold,
        "existing": options.existing,
        "seconds_download": round(total("seconds_download"), 3),
        "seconds_inference": round(total("seconds_inference"), 3),
        "seconds_upload": round(total("seconds_upload"), 3),
        "seconds_total": round(elapsed, 3),
        "frames_per_second": round(frames / elapsed, 2) if elapsed > 0 else None,
        "tasks": tasks,
    }
    if len(tasks) == 1:
        summary["task_id"] = tasks[0]["task_id"]
    return summary
