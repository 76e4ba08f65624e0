"""One pre-annotation run: look at every task first, then annotate its jobs frame batch by batch.

Per task: list the jobs and keep those of type ``annotation`` in the wanted states (default
``new``: work nobody has started); fetch their frames (``GET /api/tasks/{id}/data?type=frame``)
with a small prefetch pool; run the model in batches of frames of one size; map the model's
classes to the task's labels by name; keep scores >= threshold; upload every ``upload_every``
frames with ``PATCH /api/tasks/{id}/annotations?action=create``. A failed upload is checked
before it is retried (which frames got their shapes after all?) rather than sent twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from airflow_cvat import cvat_policy
from airflow_cvat.envelope import BadInput
from airflow_cvat.preannotation_request import PreAnnotationRequest
from airflow_cvat.trainer.preannotate.cvat_client import (
    UPLOAD_ATTEMPTS,
    api_call,
    raise_if_refused,
    select_jobs,
)
from airflow_cvat.trainer.preannotate.frames import batches_by_size, decode_frame, prefetch
from airflow_cvat.trainer.preannotate.labels import LabelMapping, map_labels
from airflow_cvat.trainer.preannotate.model import ModelFiles
from airflow_cvat.trainer.preannotate.rerun import plan_frames
from airflow_cvat.trainer.preannotate.shapes import AUTO, frame_shapes
from airflow_cvat.trainer.preannotate.summary import Totals, summarize

log = logging.getLogger("airflow_cvat.preannotate")


@dataclass
class TaskPlan:
    """What was learnt about one task before any frame is touched."""

    task: Any
    sizes: list[tuple[int, int]]
    deleted: set[int]
    mapping: LabelMapping
    jobs: list[Any]
    totals: Totals = field(default_factory=Totals)

    def frame_size(self, frame: int) -> tuple[int, int]:
        """Video tasks list one size for all frames; image tasks one per frame."""
        return self.sizes[frame] if frame < len(self.sizes) else self.sizes[0]


class Annotator:
    """One run over one or more tasks: the client, the detector, and what each task needs."""

    def __init__(
        self, options: PreAnnotationRequest, client: Any, detector: Callable, model: ModelFiles
    ) -> None:
        self.options = options
        self.client = client
        self.detector = detector
        self.model = model
        self.started = time.monotonic()
        self.frames_done = 0

    def run(self) -> dict[str, Any]:
        """Look at every task first (a wrong id or labels fail before any upload), then annotate."""
        plans = [self.plan_task(task_id) for task_id in self.options.task_ids]
        with ThreadPoolExecutor(max_workers=self.options.workers, thread_name_prefix="frames") as pool:
            for plan in plans:
                for job in plan.jobs:
                    self.annotate_job(plan, job, pool)
        return summarize(self.options, self.model, plans, time.monotonic() - self.started)

    def plan_task(self, task_id: int) -> TaskPlan:
        task = api_call(f"task {task_id}", lambda: self.client.tasks.retrieve(task_id))
        meta = api_call(f"frames of task {task_id}", task.get_meta)
        labels = [label.to_dict() for label in api_call(f"labels of task {task_id}", task.get_labels)]
        mapping = map_labels(self.model.classes, labels)
        if not mapping.by_class:
            raise BadInput(
                f"none of the model's labels ({', '.join(sorted(self.model.classes.values()))}) is a "
                f"label of task {task_id} ({', '.join(sorted(x['name'] for x in labels)) or 'none'})"
            )
        if mapping.missing:
            log.warning("task %s lacks labels %s: their detections are skipped", task_id, mapping.missing)
        jobs = select_jobs(
            api_call(f"jobs of task {task_id}", task.get_jobs), self.options.job_states, self.options.job_ids
        )
        log.info(
            "task %s: %d job(s) in state %s: %s",
            task_id,
            len(jobs),
            "/".join(self.options.job_states),
            [job.id for job in jobs],
        )
        return TaskPlan(
            task=task,
            sizes=[(int(f.width), int(f.height)) for f in meta.frames],
            deleted={int(f) for f in (meta.deleted_frames or [])},
            mapping=mapping,
            jobs=jobs,
        )

    def annotate_job(self, plan: TaskPlan, job: Any, pool: ThreadPoolExecutor) -> None:
        totals = plan.totals
        frames = range(int(job.start_frame), int(job.stop_frame) + 1)
        todo = plan_frames(frames, self.job_annotations(job.id), plan.deleted, self.options.existing)
        totals.skipped_frames["annotated"] += todo.skipped_annotated
        totals.skipped_frames["pre_annotated"] += todo.skipped_preannotated
        totals.skipped_frames["deleted"] += todo.skipped_deleted
        totals.jobs.append(int(job.id))
        log.info(
            "task %s job %s: %d frame(s) to annotate; skipped %d with people's work, "
            "%d already pre-annotated, %d deleted",
            plan.task.id,
            job.id,
            len(todo.frames),
            todo.skipped_annotated,
            todo.skipped_preannotated,
            todo.skipped_deleted,
        )

        def fetch(frame: int) -> np.ndarray:
            started = time.monotonic()
            image = decode_frame(plan.task.get_frame(frame, quality=self.options.quality).read())
            totals.seconds_download += time.monotonic() - started  # summed over threads
            return image

        pending: dict[int, list[dict[str, Any]]] = {}
        window = max(self.options.batch_size * 2, self.options.workers)
        done = 0
        for batch in batches_by_size(prefetch(fetch, todo.frames, pool, window), self.options.batch_size):
            pending.update(self.infer(plan, batch))
            done += len(batch)
            if len(pending) >= self.options.upload_every:
                self.upload(plan, job.id, pending, todo.replace)
                pending = {}
            self.progress(plan.task.id, job.id, done, len(todo.frames))
        if pending:
            self.upload(plan, job.id, pending, todo.replace)

    def job_annotations(self, job_id: int) -> dict[str, Any]:
        data = api_call(
            f"annotations of job {job_id}", lambda: self.client.jobs.retrieve(job_id).get_annotations()
        )
        return data.to_dict()

    def infer(self, plan: TaskPlan, batch: list[tuple[int, np.ndarray]]) -> dict[int, list[dict[str, Any]]]:
        """Shapes per frame for one model call (a frame with no detection maps to [])."""
        started = time.monotonic()
        outputs = self.detector(np.stack([image for _, image in batch]))
        shapes: dict[int, list[dict[str, Any]]] = {}
        totals = plan.totals
        for index, (frame, _) in enumerate(batch):
            width, height = plan.frame_size(frame)
            result = frame_shapes(
                outputs,
                index,
                frame,
                width,
                height,
                plan.mapping,
                self.model.classes,
                self.options.threshold,
                self.options.masks,
            )
            shapes[frame] = result.shapes
            totals.per_label.update(result.per_label)
            totals.skipped_labels.update(result.skipped_labels)
            totals.incompatible.update(result.incompatible)
        totals.frames += len(batch)
        self.frames_done += len(batch)
        totals.seconds_inference += time.monotonic() - started
        return shapes

    def upload(
        self,
        plan: TaskPlan,
        job_id: int,
        shapes: dict[int, list[dict[str, Any]]],
        replace: dict[int, list[dict[str, Any]]],
    ) -> None:
        """Delete the frames' old auto shapes (replace mode), then create the new ones in one PATCH."""
        started = time.monotonic()
        old = [s for frame in shapes for s in replace.get(frame, [])]
        if old:
            self.delete_shapes(plan, job_id, old)
        self.create_shapes(plan, job_id, {frame: items for frame, items in shapes.items() if items})
        plan.totals.seconds_upload += time.monotonic() - started

    def delete_shapes(self, plan: TaskPlan, job_id: int, old: list[dict[str, Any]]) -> None:
        from cvat_sdk import models
        from cvat_sdk.core.proxies.annotations import AnnotationUpdateAction

        request = models.PatchedLabeledDataRequest(
            shapes=[models.LabeledShapeRequest(**_request_fields(s)) for s in old]
        )
        api_call(
            f"deleting old auto shapes of job {job_id}",
            lambda: plan.task.update_annotations(request, action=AnnotationUpdateAction.DELETE),
        )
        plan.totals.replaced += len(old)

    def create_shapes(self, plan: TaskPlan, job_id: int, todo: dict[int, list[dict[str, Any]]]) -> None:
        """Create ``todo``'s shapes; after a failure, send only the frames that did not get theirs.

        Why check instead of resending: a request that timed out may still have been applied,
        and sending it again would duplicate (PATCH is not retried blindly, see :mod:`.cvat_client`).
        """
        from cvat_sdk import models
        from cvat_sdk.api_client.exceptions import ApiException
        from cvat_sdk.core.proxies.annotations import AnnotationUpdateAction
        from urllib3.exceptions import HTTPError

        task, totals = plan.task, plan.totals
        for attempt in range(1, UPLOAD_ATTEMPTS + 1):
            if not todo:
                return
            new = [models.LabeledShapeRequest(**s) for items in todo.values() for s in items]
            try:
                task.update_annotations(
                    models.PatchedLabeledDataRequest(shapes=new), action=AnnotationUpdateAction.CREATE
                )
            except (ApiException, HTTPError) as error:
                raise_if_refused(error, f"upload to task {task.id}")
                if attempt == UPLOAD_ATTEMPTS:
                    raise
                log.warning("upload of %d shape(s) failed (%s); checking what arrived", len(new), error)
                time.sleep(cvat_policy.backoff_seconds(attempt))
                arrived = self.auto_frames(job_id)
                todo = {frame: items for frame, items in todo.items() if frame not in arrived}
                continue
            totals.shapes += len(new)
            totals.uploads += 1
            return

    def auto_frames(self, job_id: int) -> set[int]:
        """The frames of a job that hold a model's shapes now."""
        return {s["frame"] for s in self.job_annotations(job_id)["shapes"] if s.get("source") == AUTO}

    def progress(self, task_id: int, job_id: int, done: int, total: int) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        log.info(
            "progress: task %s job %s %d/%d frames; %d frames done in all, %.1f frames/s",
            task_id,
            job_id,
            done,
            total,
            self.frames_done,
            self.frames_done / elapsed,
        )


def _request_fields(shape: dict[str, Any]) -> dict[str, Any]:
    """A stored shape (GET) as a request shape: the fields LabeledShapeRequest takes."""
    keep = ("id", "type", "frame", "label_id", "points", "source", "occluded", "outside", "z_order")
    fields = {k: shape[k] for k in keep if k in shape and shape[k] is not None}
    fields["attributes"] = [
        {"spec_id": a["spec_id"], "value": a["value"]} for a in shape.get("attributes", [])
    ]
    return fields
