"""The CVAT double's data: users, organizations, projects, tasks, jobs, annotations, requests.

Pure data and CVAT-shaped JSON rendering, no HTTP, so the rules (who sees what, which frames a
job holds, what a job's state does to its task) can be read in one place. Field names and
orders follow the CVAT 2.73 recordings in ``tests/cvat_recorded``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from demo_data.synthetic import (
    SyntheticFrame,
    SyntheticShape,
    generate_frame,
    generate_shapes,
    label_style,
)

JOB_STAGES = ("annotation", "validation", "acceptance")
JOB_STATES = ("new", "in progress", "completed", "rejected")
SHAPE_TYPES = ("rectangle", "polygon", "polyline", "points", "ellipse", "cuboid", "mask", "skeleton")

# Every exporter a CVAT 2.73 server lists; the double writes only the two the project uses and
# answers the others with a failed request (a real server would write them).
KNOWN_EXPORT_FORMATS = (
    "Generic TSV 1.0", "CamVid 1.0", "Cityscapes 1.0", "COCO 1.0", "COCO Keypoints 1.0",
    "CVAT for video 1.1", "CVAT for images 1.1", "Datumaro 1.0", "Datumaro 3D 1.0",
    "ICDAR Recognition 1.0", "ICDAR Localization 1.0", "ICDAR Segmentation 1.0", "ImageNet 1.0",
    "KITTI 1.0", "LabelMe 3.0", "LFW 1.0", "Market-1501 1.0", "Segmentation mask 1.1", "MOT 1.1",
    "MOTS PNG 1.0", "Open Images V6 1.0", "PASCAL VOC 1.1", "Sly Point Cloud Format 1.0",
    "Kitti Raw Format 1.0", "VGGFace2 1.0", "WiderFace 1.0", "YOLO 1.1",
    "Ultralytics YOLO Detection 1.0", "Ultralytics YOLO Detection Track 1.0",
    "Ultralytics YOLO Oriented Bounding Boxes 1.0", "Ultralytics YOLO Segmentation 1.0",
    "Ultralytics YOLO Pose 1.0", "Ultralytics YOLO Classification 1.0",
)  # fmt: skip


def now_iso() -> str:
    """CVAT's timestamp style: ISO 8601, microseconds, ``Z``."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ApiError(Exception):
    """An HTTP error answer: raised anywhere in the double, rendered by the server."""

    def __init__(self, status: int, body: Any = None) -> None:
        super().__init__(status, body)
        self.status = status
        self.body = {"detail": "Not found."} if body is None and status == 404 else body


@dataclass
class User:
    id: int
    username: str
    password: str
    email: str = ""
    is_superuser: bool = True

    def brief(self, base: str) -> dict[str, Any]:
        """The nested ``owner`` form of a user."""
        return {
            "url": f"{base}/api/users/{self.id}",
            "id": self.id,
            "username": self.username,
            "first_name": "",
            "last_name": "",
        }

    def to_json(self, base: str) -> dict[str, Any]:
        return {
            **{k: v for k, v in self.brief(base).items()},
            "email": self.email or f"{self.username}@localhost.localdomain",
            "groups": ["admin"] if self.is_superuser else ["user"],
            "is_staff": self.is_superuser,
            "is_superuser": self.is_superuser,
            "is_active": True,
            "last_login": None,
            "date_joined": "2026-01-01T00:00:00.000000Z",
            "has_analytics_access": self.is_superuser,
        }


@dataclass
class Organization:
    id: int
    slug: str
    members: set[str]


@dataclass
class Label:
    id: int
    name: str
    color: str
    attributes: list[dict[str, Any]]
    owner_field: str  # "task_id" or "project_id"
    owner_id: int

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "color": self.color,
            "attributes": self.attributes,
            "type": "any",
            "sublabels": [],
            self.owner_field: self.owner_id,
            "parent_id": None,
            "has_parent": False,
        }


@dataclass
class Project:
    id: int
    name: str
    owner: User
    organization_id: int | None
    labels: list[Label] = field(default_factory=list)
    created: str = field(default_factory=now_iso)


@dataclass
class FrameSource:
    """Where a task's images come from: a seed to regenerate from, or frames given in memory.

    Regenerating from the seed is what keeps a 2,000-frame task from holding 2,000 JPEGs.
    """

    count: int
    width: int = 128
    height: int = 128
    seed: int = 0
    max_objects: int = 3
    drawing_labels: tuple[str, ...] = ()
    given: list[SyntheticFrame] | None = None

    def name(self, frame: int) -> str:
        if self.given is not None:
            return self.given[frame].name
        return f"frame_{frame:06d}.jpg"

    def size(self, frame: int) -> tuple[int, int]:
        if self.given is not None:
            return self.given[frame].width, self.given[frame].height
        return self.width, self.height

    def image(self, frame: int) -> SyntheticFrame:
        """The frame with its pixels (annotations are taken from the store, not from here)."""
        if self.given is not None:
            return self.given[frame]
        return generate_frame(
            frame,
            width=self.width,
            height=self.height,
            labels=self.drawing_labels,
            seed=self.seed,
            max_objects=self.max_objects,
        )

    def initial_shapes(self, frame: int) -> list[SyntheticShape]:
        if self.given is not None:
            return list(self.given[frame].shapes)
        return generate_shapes(
            frame,
            width=self.width,
            height=self.height,
            labels=self.drawing_labels,
            seed=self.seed,
            max_objects=self.max_objects,
        )


@dataclass
class Job:
    id: int
    task_id: int
    frames: list[int]  # frame numbers in the task, ascending
    type: str = "annotation"
    stage: str = "annotation"
    state: str = "new"
    created: str = field(default_factory=now_iso)
    updated: str = field(default_factory=now_iso)
    # A ground-truth job keeps its own annotations; annotation jobs share the task's.
    own_shapes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def status(self) -> str:
        return {"annotation": "annotation", "validation": "validation", "acceptance": "completed"}[self.stage]


@dataclass
class Task:
    id: int
    name: str
    owner: User
    source: FrameSource
    segment_size: int
    project_id: int | None
    organization_id: int | None
    labels: list[Label]  # own labels; empty when the project's are used
    job_ids: list[int] = field(default_factory=list)
    deleted_frames: set[int] = field(default_factory=set)
    shapes: list[dict[str, Any]] = field(default_factory=list)
    subset: str = ""  # CVAT's task subset ("Train", "Validation", ...); "" for none
    created: str = field(default_factory=now_iso)
    updated: str = field(default_factory=now_iso)

    @property
    def size(self) -> int:
        return self.source.count


@dataclass
class ExportRequest:
    """One background export, as ``GET /api/requests/{rq_id}`` shows it."""

    rq_id: str
    target: str  # task | project | job
    target_id: int
    format: str
    save_images: bool
    owner: User
    org_id: int | None
    task_id: int | None
    project_id: int | None
    job_id: int | None
    polls_left: int
    fail_message: str | None
    status: str = "queued"
    message: str = ""
    created: str = field(default_factory=now_iso)
    started: str | None = None
    finished: str | None = None
    result_path: str | None = None
    filename: str = ""
    worker: threading.Thread | None = None  # writes the result when the double's background_exports is on

    def to_json(self, base: str) -> dict[str, Any]:
        return {
            "status": self.status,
            "message": self.message,
            "id": self.rq_id,
            "operation": {
                "type": f"export:{'dataset' if self.save_images else 'annotations'}",
                "target": self.target,
                "project_id": self.project_id,
                "task_id": self.task_id,
                "job_id": self.job_id,
                "org_id": self.org_id,
                "format": self.format,
                "lightweight": None,
            },
            "progress": 0.0,
            "created_date": self.created,
            "started_date": self.started,
            "finished_date": self.finished,
            "expiry_date": _plus_one_day(self.finished),
            "owner": {"id": self.owner.id, "username": self.owner.username},
            "result_url": self.result_url(base) if self.status == "finished" else None,
            "result_id": None,
        }

    def result_url(self, base: str) -> str:
        return (
            f"{base}/api/{self.target}s/{self.target_id}/dataset/download?rq_id={quote(self.rq_id, safe='~')}"
        )


def _plus_one_day(stamp: str | None) -> str | None:
    if stamp is None:
        return None
    parsed = dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ") + dt.timedelta(days=1)
    return parsed.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def rq_id_for(target: str, target_id: int, user_id: int, fmt: str, save_images: bool) -> str:
    """The id shape CVAT 2.73 uses, e.g. ``action=export&target=task&...&format=COCO_1~0&...``."""
    mangled = fmt.replace(" ", "_").replace(".", "~")
    subresource = "dataset" if save_images else "annotations"
    return (
        f"action=export&target={target}&target_id={target_id}&user_id={user_id}"
        f"&format={mangled}&subresource={subresource}"
    )


@dataclass
class State:
    """Everything the double knows; callers hold the double's lock while using it."""

    users: dict[str, User] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    sessions: dict[str, str] = field(default_factory=dict)
    organizations: dict[str, Organization] = field(default_factory=dict)
    projects: dict[int, Project] = field(default_factory=dict)
    tasks: dict[int, Task] = field(default_factory=dict)
    jobs: dict[int, Job] = field(default_factory=dict)
    requests: dict[str, ExportRequest] = field(default_factory=dict)
    _ids: dict[str, Iterator[int]] = field(default_factory=dict)

    def next_id(self, kind: str) -> int:
        """Per-kind counters from 1, like database sequences."""
        return next(self._ids.setdefault(kind, itertools.count(1)))

    # -- users and organizations -----------------------------------------------------------

    def add_user(self, username: str, password: str, *, superuser: bool = True) -> User:
        user = User(id=self.next_id("user"), username=username, password=password, is_superuser=superuser)
        self.users[username] = user
        return user

    def add_organization(self, slug: str, members: Iterable[str]) -> Organization:
        org = Organization(id=self.next_id("organization"), slug=slug, members=set(members))
        self.organizations[slug] = org
        return org

    def org_by_id(self, org_id: int | None) -> Organization | None:
        return next((o for o in self.organizations.values() if o.id == org_id), None)

    def org_id_of(self, slug: str | None) -> int | None:
        if slug is None:
            return None
        if slug not in self.organizations:
            raise ValueError(f"unknown organization {slug!r}; add_organization() first")
        return self.organizations[slug].id

    # -- labels -----------------------------------------------------------------------------

    def make_labels(
        self, specs: Sequence[str | dict[str, Any]], owner_field: str, owner_id: int
    ) -> list[Label]:
        """Labels from names or ``{"name", "color"?, "attributes"?: [{"name", "input_type", ...}]}``."""
        names = [spec if isinstance(spec, str) else spec["name"] for spec in specs]
        labels = []
        for spec, name in zip(specs, names, strict=True):
            spec = {"name": spec} if isinstance(spec, str) else spec
            colour = spec.get("color") or "#{:02x}{:02x}{:02x}".format(*label_style(names, name)[1])
            attributes = [self._attribute(a) for a in spec.get("attributes", [])]
            labels.append(Label(self.next_id("label"), name, colour, attributes, owner_field, owner_id))
        return labels

    def _attribute(self, spec: dict[str, Any]) -> dict[str, Any]:
        values = list(spec.get("values", []))
        return {
            "id": self.next_id("attribute"),
            "name": spec["name"],
            "mutable": bool(spec.get("mutable", False)),
            "input_type": spec.get("input_type", "text"),
            "default_value": spec.get("default_value", values[0] if values else ""),
            "values": values,
        }

    def task_labels(self, task: Task) -> list[Label]:
        if task.project_id is not None:
            return self.projects[task.project_id].labels
        return task.labels

    # -- tasks and jobs ---------------------------------------------------------------------

    def segment_jobs(self, task: Task) -> list[Job]:
        """One annotation job per ``segment_size`` frames (all frames when it is 0)."""
        size = task.segment_size or task.size or 1
        jobs = []
        for start in range(0, task.size, size):
            frames = list(range(start, min(start + size, task.size)))
            job = Job(id=self.next_id("job"), task_id=task.id, frames=frames)
            self.jobs[job.id] = job
            task.job_ids.append(job.id)
            jobs.append(job)
        return jobs

    def task_jobs(self, task: Task) -> list[Job]:
        return [self.jobs[j] for j in task.job_ids]

    def shapes_from_synthetic(self, task: Task, frame: int, shapes: Iterable[SyntheticShape]) -> None:
        """Store a frame's known answer as CVAT shapes on the task."""
        by_name = {label.name: label for label in self.task_labels(task)}
        for shape in shapes:
            label = by_name.get(shape.label)
            if label is None:
                raise ValueError(f"shape label {shape.label!r} is not a label of task {task.id}")
            task.shapes.append(self.complete_shape({**self._cvat_shape(shape, label), "frame": frame}))

    @staticmethod
    def _cvat_shape(shape: SyntheticShape, label: Label) -> dict[str, Any]:
        spec_ids = {a["name"]: a["id"] for a in label.attributes}
        attributes = [
            {"spec_id": spec_ids[name], "value": str(value)}
            for name, value in shape.attributes.items()
            if name in spec_ids
        ]
        return {
            "label_id": label.id,
            "type": shape.type,
            "points": [float(p) for p in shape.points],
            "occluded": shape.occluded,
            "z_order": shape.z_order,
            "source": shape.source,
            "attributes": attributes,
        }

    def complete_shape(self, shape: dict[str, Any]) -> dict[str, Any]:
        """Fill the fields CVAT fills on create (ids, defaults) in CVAT's key order."""
        return {
            "id": shape.get("id") or self.next_id("shape"),
            "label_id": shape["label_id"],
            "type": shape["type"],
            "frame": shape["frame"],
            "group": shape.get("group") or 0,
            "source": shape.get("source") or "manual",
            "score": float(shape.get("score", 1.0)),
            "occluded": bool(shape.get("occluded", False)),
            "outside": bool(shape.get("outside", False)),
            "z_order": int(shape.get("z_order", 0)),
            "rotation": float(shape.get("rotation", 0.0)),
            "points": [float(p) for p in shape.get("points", [])],
            "attributes": list(shape.get("attributes", [])),
            "elements": list(shape.get("elements", [])),
        }

    def synthetic_shapes(self, task: Task, shapes: Iterable[dict[str, Any]]) -> list[SyntheticShape]:
        """Stored CVAT shapes back to the exporter's form (attribute ids to names)."""
        labels = {label.id: label for label in self.task_labels(task)}
        result = []
        for shape in shapes:
            label = labels[shape["label_id"]]
            names = {a["id"]: a["name"] for a in label.attributes}
            result.append(
                SyntheticShape(
                    label=label.name,
                    type=shape["type"],
                    points=list(shape["points"]),
                    occluded=shape["occluded"],
                    source=shape["source"],
                    z_order=shape["z_order"],
                    attributes={
                        names[a["spec_id"]]: a["value"] for a in shape["attributes"] if a["spec_id"] in names
                    },
                )
            )
        return result

    def export_frames(
        self, task: Task, frames: Iterable[int], shapes: list[dict[str, Any]]
    ) -> Iterator[SyntheticFrame]:
        """Frames with pixels regenerated one at a time and annotations from the store."""
        by_frame: dict[int, list[dict[str, Any]]] = {}
        for shape in shapes:
            by_frame.setdefault(shape["frame"], []).append(shape)
        for number in frames:
            image = task.source.image(number)
            yield dataclasses.replace(
                image,
                shapes=self.synthetic_shapes(task, by_frame.get(number, [])),
                frame=number,
                subset=task.subset,
            )
