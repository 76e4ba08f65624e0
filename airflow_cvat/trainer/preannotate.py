"""Pre-annotation: run a published model over CVAT frames nobody has annotated yet, upload shapes.

Runs where the model runs (a pod of the training image, or a local subprocess)::

    python -m airflow_cvat.trainer.preannotate --model-uri URI --cvat-url URL --task-id N \\
        [--job-states new] [--threshold 0.5] [--batch-size 16] [--result-file PATH]

``--model-uri`` is a published version folder ``{root}/models/{name}/{version}/`` (``saved_model/``
and ``label_map.json``), the model's folder ``{root}/models/{name}`` or its ``LATEST`` file (then
the version LATEST names). file:// and s3:// alike (:mod:`airflow_cvat.trainer.storage`).

Credentials come from the environment only, never argv (argv shows in ``ps``, pod specs and
logs): ``CVAT_ACCESS_TOKEN`` (a personal access token), or ``CVAT_USERNAME``/``CVAT_PASSWORD``;
``CVAT_ORGANIZATION`` (slug) and ``CVAT_VERIFY_SSL`` are optional.

What it does, per task: list the jobs, keep those of type ``annotation`` in the wanted states
(default ``new``: work nobody has started); fetch their frames one by one with a small prefetch
pool (``GET /api/tasks/{id}/data?type=frame``); run the SavedModel in batches of frames of one
size; map the model's classes to the task's CVAT labels **by name** (names CVAT lacks are
skipped and counted); keep scores >= threshold; turn boxes into pixel rectangles
``[xtl, ytl, xbr, ybr]`` and, for Mask R-CNN, masks into polygons (default) or CVAT masks; upload
every ``--upload-every`` frames with ``PATCH /api/tasks/{id}/annotations?action=create`` and
``source: "auto"``.

Re-running does not duplicate. The rule, per frame, read from the job's annotations first:

* a frame holding anything not made by a model (``source`` other than ``auto``: a person's
  shape, tag or track) is never touched: people's work wins, and boxes on top of it would be
  duplicates of another kind;
* a frame holding only ``auto`` shapes is left as it is (``--existing skip``, the default: a
  retry after a crash resumes where the upload stopped), or its auto shapes are deleted and it
  is annotated again (``--existing replace``: a newer model replaces an older one's suggestions);
* an empty frame is annotated.

CVAT's UI turns an ``auto`` shape a person edits into ``semi-auto``, so corrections count as
people's work. A failed upload is checked before it is retried (which frames got their shapes
after all?) rather than sent twice.

Output: progress lines on stderr (frames done, frames/s); the last stdout line is the JSON
summary ``{"status": "ok", "task_id", "jobs", "frames", "shapes", "per_label", "skipped_labels",
"seconds_inference", "seconds_upload", ...}``, also written to ``--result-file``. Exit 2 with
``{"status": "error", "error"}`` on bad input (unknown task, no model, no credentials), 1 on
other failures.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import sys
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger("airflow_cvat.preannotate")

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
AUTO = "auto"
JOB_STATES = ("new", "in progress", "completed", "rejected")
EXISTING_MODES = ("skip", "replace")
MASK_MODES = ("polygon", "mask", "box")
RETRY_STATUSES = (429, 500, 502, 503, 504)
UPLOAD_ATTEMPTS = 4


class BadInput(Exception):
    """The request cannot work as given (exit 2): retrying will not help, fixing the input will."""


# ---- options ------------------------------------------------------------------------------------


@dataclass
class Options:
    model_uri: str
    cvat_url: str
    task_ids: tuple[int, ...]
    job_states: tuple[str, ...] = ("new",)
    threshold: float = 0.5
    batch_size: int = 16
    result_file: str | None = None
    existing: str = "skip"
    masks: str = "polygon"
    quality: str = "original"
    upload_every: int = 64
    workers: int = 4
    job_ids: tuple[int, ...] = ()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_cvat.trainer.preannotate",
        description="Pre-annotate a CVAT task's unannotated jobs with a published model. "
        "Credentials: CVAT_ACCESS_TOKEN, or CVAT_USERNAME and CVAT_PASSWORD; CVAT_ORGANIZATION.",
    )
    parser.add_argument("--model-uri", required=True, help="version folder, model folder or LATEST file")
    parser.add_argument("--cvat-url", required=True)
    parser.add_argument(
        "--task-id", required=True, type=int, action="append", help="a CVAT task id; repeat for several"
    )
    parser.add_argument(
        "--job-states", default="new", help="comma-separated job states to annotate (default: new)"
    )
    parser.add_argument("--job-ids", default="", help="comma-separated job ids: only these jobs")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=16, help="frames per model call")
    parser.add_argument("--upload-every", type=int, default=64, help="frames per upload request")
    parser.add_argument("--existing", choices=EXISTING_MODES, default="skip")
    parser.add_argument("--masks", choices=MASK_MODES, default="polygon", help="Mask R-CNN output as")
    parser.add_argument("--quality", choices=("original", "compressed"), default="original")
    parser.add_argument("--workers", type=int, default=4, help="parallel frame downloads")
    parser.add_argument("--result-file")
    return parser


def parse_options(argv: Sequence[str] | None) -> Options:
    """Parse and validate; every problem is a BadInput naming the flag."""
    ns = build_parser().parse_args(argv)
    states = tuple(s.strip() for s in ns.job_states.split(",") if s.strip())
    unknown = [s for s in states if s not in JOB_STATES]
    if not states or unknown:
        raise BadInput(f"--job-states: {unknown or 'empty'}; choose from {', '.join(JOB_STATES)}")
    if not 0.0 <= ns.threshold <= 1.0:
        raise BadInput(f"--threshold must be within 0..1, got {ns.threshold}")
    for name in ("batch_size", "upload_every", "workers"):
        if getattr(ns, name) < 1:
            raise BadInput(f"--{name.replace('_', '-')} must be at least 1, got {getattr(ns, name)}")
    if any(task_id < 1 for task_id in ns.task_id):
        raise BadInput(f"--task-id must be positive CVAT task ids, got {ns.task_id}")
    if not ns.cvat_url.startswith(("http://", "https://")):
        raise BadInput(f"--cvat-url must start with http:// or https://, got {ns.cvat_url!r}")
    try:
        job_ids = tuple(int(j) for j in ns.job_ids.split(",") if j.strip())
    except ValueError:
        raise BadInput(f"--job-ids must be comma-separated integers, got {ns.job_ids!r}") from None
    return Options(
        model_uri=ns.model_uri,
        cvat_url=ns.cvat_url.rstrip("/"),
        task_ids=tuple(dict.fromkeys(ns.task_id)),
        job_states=states,
        threshold=ns.threshold,
        batch_size=ns.batch_size,
        result_file=ns.result_file,
        existing=ns.existing,
        masks=ns.masks,
        quality=ns.quality,
        upload_every=ns.upload_every,
        workers=ns.workers,
        job_ids=job_ids,
    )


# ---- the model ----------------------------------------------------------------------------------


@dataclass
class ModelFiles:
    """A published version on local disk: the SavedModel and class id -> label name."""

    version_uri: str
    saved_model: str
    classes: dict[int, str]


def resolve_version(uri: str) -> str:
    """The version folder a model URI means: itself, or what the model's LATEST names.

    Why accept three forms: the DAG passes ``{root}/models/{name}`` (use LATEST at run time, not
    at parse time), people pass a version folder to pin one, and LATEST's own URI is what the
    publish step's XCom shows.
    """
    from airflow_cvat.trainer import storage

    uri = uri.rstrip("/")
    if storage.exists(storage.join(uri, "saved_model", "saved_model.pb")):
        return uri
    latest = uri if uri.endswith("/LATEST") else storage.join(uri, "LATEST")
    if not storage.exists(latest):
        raise BadInput(
            f"no model at {uri}: expected a version folder with saved_model/ and label_map.json, "
            "a model folder with LATEST, or a LATEST file (has the model been published?)"
        )
    try:
        pointer = json.loads(storage.read_text(latest))
        version = str(pointer["version"])
    except (ValueError, KeyError, TypeError):
        raise BadInput(f'{latest} is not JSON naming a version ({{"version": ...}})') from None
    folder = storage.join(latest.rsplit("/", 1)[0], version)
    if not storage.exists(storage.join(folder, "saved_model", "saved_model.pb")):
        raise BadInput(f"{latest} names version {version!r}, but {folder} holds no saved_model/")
    return folder


def load_classes(text: str) -> dict[int, str]:
    """label_map.json (``{"labels": [{"id", "name"}, ...]}``) as contiguous id -> name."""
    try:
        labels = json.loads(text)["labels"]
        return {int(entry["id"]): str(entry["name"]) for entry in labels}
    except (ValueError, KeyError, TypeError):
        raise BadInput('label_map.json must be {"labels": [{"id": 1, "name": "..."}, ...]}') from None


def fetch_model(uri: str, scratch: str) -> ModelFiles:
    """Resolve the version and bring saved_model/ and label_map.json to local disk."""
    from airflow_cvat.trainer import storage

    version = resolve_version(uri)
    workspace = storage.Workspace(version, scratch=scratch if not storage.is_local(version) else None)
    if not workspace.exists("label_map.json"):
        raise BadInput(f"{version} has no label_map.json: class ids cannot be matched to CVAT labels")
    if not workspace.exists("PUBLISHED.json"):
        log.warning("%s has no PUBLISHED.json: it may not be a completely published version", version)
    saved_model = workspace.pull("saved_model")
    classes = load_classes(workspace.pull("label_map.json").read_text())
    return ModelFiles(version_uri=version, saved_model=str(saved_model), classes=classes)


class Detector:
    """The SavedModel's ``serving_default`` signature (see :mod:`airflow_cvat.trainer.export`)."""

    def __init__(self, path: str) -> None:
        import tensorflow as tf  # here, not at module import: the helpers below are tested without it

        self._tf = tf
        try:
            loaded = tf.saved_model.load(path)
        except (OSError, ValueError) as error:
            raise BadInput(f"cannot load the SavedModel at {path}: {error}") from None
        if "serving_default" not in loaded.signatures:
            raise BadInput(f"the SavedModel at {path} has no serving_default signature")
        self._loaded = loaded  # keep the object alive: the signature refers to its variables
        self._serve = loaded.signatures["serving_default"]

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self._serve(images=self._tf.constant(images, dtype=self._tf.uint8))
        return {name: value.numpy() for name, value in outputs.items()}


# ---- detections to CVAT shapes (pure: unit-tested without TensorFlow or CVAT) -------------------


@dataclass
class LabelTarget:
    """A CVAT label a model class maps to, and the shape types it accepts."""

    id: int
    name: str
    type: str = "any"

    def accepts(self, shape_type: str) -> bool:
        return self.type in ("any", shape_type)


@dataclass
class LabelMapping:
    """Model class id -> CVAT label, matched by name; what could not be matched, and why."""

    by_class: dict[int, LabelTarget]
    missing: list[str]  # model label names the task lacks


def map_labels(classes: dict[int, str], cvat_labels: Iterable[dict[str, Any]]) -> LabelMapping:
    """Match by exact name. Why not by id: CVAT's label ids are per server and per task/project."""
    by_name = {}
    for label in cvat_labels:
        if label.get("parent_id"):  # skeleton points are not labels of their own
            continue
        by_name[label["name"]] = LabelTarget(int(label["id"]), label["name"], str(label.get("type") or "any"))
    mapped = {cid: by_name[name] for cid, name in classes.items() if name in by_name}
    missing = sorted({name for name in classes.values() if name not in by_name})
    return LabelMapping(mapped, missing)


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


# ---- what to annotate ---------------------------------------------------------------------------


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
    """Apply the re-run rule of the module docstring to one job's frames."""
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


def batches_by_size(
    items: Iterable[tuple[int, np.ndarray]], batch_size: int
) -> Iterator[list[tuple[int, np.ndarray]]]:
    """Consecutive frames of one size, at most ``batch_size``: the model takes one [b,h,w,3] tensor."""
    batch: list[tuple[int, np.ndarray]] = []
    for item in items:
        if batch and (len(batch) >= batch_size or batch[0][1].shape != item[1].shape):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


# ---- CVAT ---------------------------------------------------------------------------------------


def credentials_from_env(env: dict[str, str]) -> tuple[Any, str | None, bool]:
    """(cvat-sdk credentials, organization, verify_ssl) from CVAT_* variables."""
    from cvat_sdk.core.client import AccessTokenCredentials, PasswordCredentials

    token = env.get("CVAT_ACCESS_TOKEN")
    if token:
        credentials: Any = AccessTokenCredentials(token)
    elif env.get("CVAT_USERNAME") and env.get("CVAT_PASSWORD"):
        credentials = PasswordCredentials(env["CVAT_USERNAME"], env["CVAT_PASSWORD"])
    else:
        raise BadInput(
            "no CVAT credentials: set CVAT_ACCESS_TOKEN (a personal access token), or CVAT_USERNAME "
            "and CVAT_PASSWORD, in the environment (never on the command line)"
        )
    verify = env.get("CVAT_VERIFY_SSL", "true").lower() not in ("false", "0", "no")
    return credentials, env.get("CVAT_ORGANIZATION") or None, verify


def make_client(url: str, env: dict[str, str], workers: int):
    """A logged-in cvat-sdk client that retries transient faults (GETs and DELETEs only)."""
    from cvat_sdk import Client
    from cvat_sdk.api_client.exceptions import ApiException
    from cvat_sdk.core.client import Config
    from urllib3.util import Retry

    credentials, organization, verify = credentials_from_env(env)
    client = Client(url, config=Config(verify_ssl=verify), check_server_version=False)
    pool = client.api_client.rest_client.pool_manager.connection_pool_kw
    # PATCH is not retried blindly: a create that reached the server would be sent twice.
    # upload() checks what arrived instead.
    pool["retries"] = Retry(
        total=5,
        backoff_factor=0.5,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=frozenset({"GET", "HEAD", "OPTIONS", "DELETE"}),
        respect_retry_after_header=True,
        raise_on_status=False,
    )
    pool["maxsize"] = max(workers, 1) + 1  # parallel frame downloads share the pool
    try:
        client.login(credentials)
        # A token login sends nothing; ask who we are so wrong credentials fail here, clearly.
        client.api_client.users_api.retrieve_self()
    except ApiException as error:
        if error.status in (401, 403):
            raise BadInput(f"CVAT at {url} rejected the credentials ({error.status}): {error.body}") from None
        raise
    if organization:
        client.organization_slug = organization
    return client


def api_call(what: str, call: Callable[[], Any]) -> Any:
    """Run a CVAT call; a 4xx becomes BadInput naming the resource (no retry can fix it)."""
    from cvat_sdk.api_client.exceptions import ApiException

    try:
        return call()
    except ApiException as error:
        status = error.status or 0
        if 400 <= status < 500 and status != 429:
            detail = error.body.decode(errors="replace") if isinstance(error.body, bytes) else error.body
            raise BadInput(f"CVAT answered {status} for {what}: {detail}") from None
        raise


def select_jobs(jobs: Iterable[Any], states: Sequence[str], job_ids: Sequence[int] = ()) -> list[Any]:
    """Annotation jobs (never ground truth) in the wanted states, by id."""
    chosen = [
        job
        for job in jobs
        if str(job.type) == "annotation" and str(job.state) in states and (not job_ids or job.id in job_ids)
    ]
    return sorted(chosen, key=lambda job: job.id)


def decode_frame(data: bytes) -> np.ndarray:
    """Frame bytes (JPEG, PNG, ...) as uint8 RGB [h, w, 3]."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def prefetch(
    fetch: Callable[[int], np.ndarray], frames: Sequence[int], pool: ThreadPoolExecutor, window: int
) -> Iterator[tuple[int, np.ndarray]]:
    """Frames in order, downloaded ``window`` ahead: downloads overlap inference, memory stays bounded."""
    pending: deque[tuple[int, Future]] = deque()
    queue = iter(frames)
    for frame in queue:
        pending.append((frame, pool.submit(fetch, frame)))
        if len(pending) >= window:
            break
    while pending:
        frame, future = pending.popleft()
        nxt = next(queue, None)
        if nxt is not None:
            pending.append((nxt, pool.submit(fetch, nxt)))
        yield frame, future.result()


# ---- the run ------------------------------------------------------------------------------------


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

    def __init__(self, options: Options, client: Any, detector: Callable, model: ModelFiles) -> None:
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
        """Delete the frames' old auto shapes (replace mode), then create the new ones in one PATCH.

        On a failed create, ask CVAT which frames now hold auto shapes and send only the rest:
        a request that timed out may still have been applied, and sending it again would
        duplicate.
        """
        from cvat_sdk import models
        from cvat_sdk.api_client.exceptions import ApiException
        from cvat_sdk.core.proxies.annotations import AnnotationUpdateAction
        from urllib3.exceptions import HTTPError

        task, totals = plan.task, plan.totals
        started = time.monotonic()
        old = [s for frame in shapes for s in replace.get(frame, [])]
        if old:
            request = models.PatchedLabeledDataRequest(
                shapes=[models.LabeledShapeRequest(**_request_fields(s)) for s in old]
            )
            api_call(
                f"deleting old auto shapes of job {job_id}",
                lambda: task.update_annotations(request, action=AnnotationUpdateAction.DELETE),
            )
            totals.replaced += len(old)
        todo = {frame: items for frame, items in shapes.items() if items}
        for attempt in range(1, UPLOAD_ATTEMPTS + 1):
            if not todo:
                break
            new = [models.LabeledShapeRequest(**s) for items in todo.values() for s in items]
            try:
                task.update_annotations(
                    models.PatchedLabeledDataRequest(shapes=new), action=AnnotationUpdateAction.CREATE
                )
            except (ApiException, HTTPError) as error:
                status = getattr(error, "status", None)
                if status is not None and 400 <= status < 500 and status != 429:
                    api_call(f"upload to task {task.id}", lambda e=error: _raise(e))
                if attempt == UPLOAD_ATTEMPTS:
                    raise
                log.warning("upload of %d shape(s) failed (%s); checking what arrived", len(new), error)
                time.sleep(min(2**attempt, 10))
                arrived = {
                    s["frame"] for s in self.job_annotations(job_id)["shapes"] if s.get("source") == AUTO
                }
                todo = {frame: items for frame, items in todo.items() if frame not in arrived}
                continue
            totals.shapes += len(new)
            totals.uploads += 1
            todo = {}
        totals.seconds_upload += time.monotonic() - started

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


def summarize(options: Options, model: ModelFiles, plans: list[TaskPlan], elapsed: float) -> dict[str, Any]:
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
        "status": "ok",
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


def _request_fields(shape: dict[str, Any]) -> dict[str, Any]:
    """A stored shape (GET) as a request shape: the fields LabeledShapeRequest takes."""
    keep = ("id", "type", "frame", "label_id", "points", "source", "occluded", "outside", "z_order")
    fields = {k: shape[k] for k in keep if k in shape and shape[k] is not None}
    fields["attributes"] = [
        {"spec_id": a["spec_id"], "value": a["value"]} for a in shape.get("attributes", [])
    ]
    return fields


def _raise(error: Exception) -> None:
    raise error


def run(options: Options, env: dict[str, str]) -> dict[str, Any]:
    """Credentials first (cheap), then the model, then CVAT: bad input fails before heavy work."""
    import tempfile

    credentials_from_env(env)
    with tempfile.TemporaryDirectory(prefix="airflow-cvat-preannotate-") as scratch:
        model = fetch_model(options.model_uri, scratch)
        client = make_client(options.cvat_url, env, options.workers)
        log.info("model %s (%d classes); CVAT %s", model.version_uri, len(model.classes), options.cvat_url)
        with client:
            detector = Detector(model.saved_model)
            return Annotator(options, client, detector, model).run()


def emit(payload: dict[str, Any], code: int, result_file: str | None) -> int:
    """The JSON result: last stdout line, and the result file (the pod's XCom)."""
    text = json.dumps(payload, sort_keys=True, default=str)
    if result_file:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(result_file)), exist_ok=True)
            with open(result_file, "w", encoding="utf-8") as handle:
                handle.write(text)
        except OSError:
            log.exception("cannot write the result file %s", result_file)
    sys.stderr.flush()
    print(text, flush=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("absl", "tensorflow", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    result_file = None
    try:
        options = parse_options(argv)
        result_file = options.result_file
        return emit(run(options, dict(os.environ)), EXIT_OK, result_file)
    except BadInput as error:
        return emit({"status": "error", "error": str(error)}, EXIT_BAD_INPUT, result_file)
    except SystemExit as error:  # argparse: usage errors are bad input too
        if error.code in (0, None):
            raise
        return emit(
            {"status": "error", "error": "invalid command line (see usage above)"}, EXIT_BAD_INPUT, None
        )
    except Exception as error:  # noqa: BLE001 - the pod must always end with a JSON line
        traceback.print_exc(file=sys.stderr)
        return emit(
            {"status": "error", "error": f"{type(error).__name__}: {error}"}, EXIT_FAILED, result_file
        )


if __name__ == "__main__":
    sys.exit(main())
