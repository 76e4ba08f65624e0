"""The export's plan: which jobs were selected, and which CVAT request exports what.

Everything :class:`~airflow_cvat.operators.export.CVATExportOperator` decides before CVAT is asked
to export; JSON, so that a deferred export writes it beside the archives and reads it back when
it resumes. Imported when the task runs, not when the DAG is parsed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from airflow_cvat.manifest import Label


@dataclass
class SelectedJob:
    task_id: int
    job_id: int
    frames: list[int]
    frame_names: list[str]
    # The job's range in the task, deleted frames included (CVAT's job annotations cover them).
    start_frame: int
    stop_frame: int


@dataclass
class ExportUnit:
    """One CVAT export request: a whole task (job_id None), or one job of it."""

    task_id: int
    job_id: int | None
    frames: list[int]
    frame_names: list[str]
    rq_id: str = ""

    @property
    def path(self) -> str:
        job = f"-job-{self.job_id}" if self.job_id is not None else ""
        return f"archives/task-{self.task_id}{job}.zip"

    def what(self, fmt: str) -> str:
        if self.job_id is None:
            return f"export of task {self.task_id} as {fmt!r}"
        return f"export of job {self.job_id} (task {self.task_id}) as {fmt!r}"


@dataclass
class ExportPlan:
    """Everything decided before CVAT is asked to export; JSON, so a deferred task can resume."""

    source: dict[str, Any]
    labels: list[Label]
    fingerprint: str
    jobs: list[SelectedJob]
    left_out: list[dict]
    units: list[ExportUnit] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ExportPlan:
        data = json.loads(text)
        data["labels"] = [Label(**label) for label in data["labels"]]
        data["jobs"] = [SelectedJob(**job) for job in data["jobs"]]
        data["units"] = [ExportUnit(**unit) for unit in data["units"]]
        return cls(**data)
