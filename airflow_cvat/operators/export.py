"""CVATExportOperator: finished annotation work from CVAT into object storage, with a manifest.

CVAT has no "completed jobs only" export, but a job export holds exactly that job's frames. So a
task whose every annotation job is selected is exported whole, in one request (the fastest CVAT
allows, restricting nothing), and a task with some unfinished jobs is exported job by job, only
the finished ones. All exports are started before any is waited for: CVAT's workers prepare them
side by side. Archives stream straight into the destination (file://, s3://, anything
ObjectStoragePath reaches) and manifest.json is written last, so a dataset folder without a
manifest is never taken for a finished export.

Deferrable: the wait for CVAT can run in the triggerer (CVATRequestTrigger) instead of a worker
slot. The export's plan (what was selected, which request exports what) is then written beside
the archives before deferring, and read back when the task resumes; only request ids and the
connection id go into the metadata database.

Import cost: the DAG file imports this module on every parse, so the hook, the archive reader,
the manifest and the plan's dataclasses (:mod:`airflow_cvat.operators.export_plan`) are imported
when the task runs.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, ObjectStoragePath
from airflow.sdk.configuration import conf
from airflow.sdk.exceptions import AirflowException, AirflowSkipException

from airflow_cvat.operators import DEFAULT_CVAT_CONN_ID

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_cvat.hooks.cvat import CVATHook
    from airflow_cvat.manifest import Archive, Label, Manifest
    from airflow_cvat.operators.export_plan import ExportPlan, ExportUnit, SelectedJob

LATEST_NAME = "LATEST.json"
#: Written beside the archives while a deferred export waits; removed once the manifest is written.
PLAN_NAME = "export-plan.json"
COPY_CHUNK = 1 << 20
# Fields of CVAT's annotation objects that change without the annotation changing.
_VOLATILE_KEYS = frozenset({"id", "version", "created_date", "updated_date"})


def _strip_volatile(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_volatile(v) for k, v in value.items() if k not in _VOLATILE_KEYS}
    if isinstance(value, list):
        return [_strip_volatile(v) for v in value]
    return value


class CVATExportOperator(BaseOperator):
    """Export finished annotation work of CVAT tasks or a project into an object-storage folder.

    :param destination: folder URI for this export (e.g. ``s3://bucket/cvat/datasets/task-7/{{ run_id }}``).
        Receives ``archives/*.zip`` and ``manifest.json``; the manifest's URI is returned (XCom).
    :param task_ids: CVAT task ids to export; or
    :param project_id: a CVAT project id (all its tasks); or
    :param source_uri: a CVAT export zip already in object storage (CVAT can export to cloud storage).
    :param format: ``"COCO 1.0"`` (boxes, polygons, masks) or ``"CVAT for images 1.1"``.
    :param job_states: job states that count as finished (default: completed).
    :param job_stages: job stages that count as finished (default: acceptance).
    :param all_jobs: export every annotation job whatever its state (still no ground-truth jobs).
    :param skip_unchanged: skip when the annotations' fingerprint equals the last export of the same
        source, recorded in ``{destination}/../LATEST.json``.
    :param record_latest: write that record after a successful export. A pipeline that wants
        "unchanged" to mean "already trained on" sets this False and records it after training.
    :param export_timeout: seconds CVAT may take to prepare the exports.
    :param status_check_period: the longest wait between two polls of CVAT (the first is 0.1 s,
        each next one 1.3 times longer).
    :param deferrable: wait for CVAT in the triggerer, not in a worker slot. Defaults to Airflow's
        ``[operators] default_deferrable``.
    """

    template_fields: Sequence[str] = (
        "destination",
        "task_ids",
        "project_id",
        "source_uri",
        "format",
        "all_jobs",
    )
    ui_color = "#e6f1fb"
    #: Export a task whole when every annotation job of it is selected. Off, every task is
    #: exported job by job (one archive per job); the manifest's content is the same either way.
    prefer_task_exports = True

    def __init__(
        self,
        *,
        destination: str,
        task_ids: Any = None,
        project_id: Any = None,
        source_uri: str | None = None,
        cvat_conn_id: str = DEFAULT_CVAT_CONN_ID,
        storage_conn_id: str | None = None,
        format: str = "COCO 1.0",
        job_states: Sequence[str] = ("completed",),
        job_stages: Sequence[str] = ("acceptance",),
        all_jobs: bool = False,
        skip_unchanged: bool = True,
        record_latest: bool = True,
        export_timeout: float = 3600,
        status_check_period: float = 2.0,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.destination = destination
        self.task_ids = task_ids
        self.project_id = project_id
        self.source_uri = source_uri
        self.cvat_conn_id = cvat_conn_id
        self.storage_conn_id = storage_conn_id
        self.format = format
        self.job_states = tuple(job_states)
        self.job_stages = tuple(job_stages)
        self.all_jobs = all_jobs
        self.skip_unchanged = skip_unchanged
        self.record_latest = record_latest
        self.export_timeout = export_timeout
        self.status_check_period = status_check_period
        self.deferrable = deferrable

    # -- entry points -------------------------------------------------------------------------

    def execute(self, context: Context) -> str:
        task_ids, project_id = self._validate()
        destination = self._writable_destination()
        if self.source_uri:
            return self._publish(destination, self._import_from_storage(destination))
        hook = self._hook()
        plan = self._plan(hook, destination, task_ids, project_id)
        requests = self._start_exports(hook, plan)
        if self.deferrable:
            from airflow_cvat.triggers.cvat import CVATRequestTrigger

            # The plan waits in storage, not in the metadata DB: it can name thousands of frames.
            (destination / PLAN_NAME).write_text(plan.to_json())
            self.defer(
                trigger=CVATRequestTrigger(
                    requests=requests,
                    cvat_conn_id=self.cvat_conn_id,
                    poll_interval=self.status_check_period,
                    timeout=self.export_timeout,
                ),
                method_name="execute_complete",
                # A backstop only: the trigger's own deadline gives the clearer message first.
                timeout=timedelta(seconds=self.export_timeout + 600),
            )
        urls = hook.wait_for_exports(requests, timeout=self.export_timeout)
        return self._finish(hook, destination, plan, urls)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> str:
        """Resume after CVATRequestTrigger: download what CVAT prepared, write the manifest."""
        from airflow_cvat.hooks.cvat import CVATError
        from airflow_cvat.operators.export_plan import ExportPlan

        if not event or event.get("status") != "success":
            message = (event or {}).get("message") or f"CVAT's export wait ended without a result: {event!r}"
            raise CVATError(message)
        destination = ObjectStoragePath(self.destination, conn_id=self.storage_conn_id)
        plan_path = destination / PLAN_NAME
        if not plan_path.exists():
            raise AirflowException(
                f"the export plan {plain_uri(plan_path)} written before deferring is gone, so the exports "
                "cannot be matched to jobs; clear the task to export again"
            )
        plan = ExportPlan.from_json(plan_path.read_text())
        uri = self._finish(self._hook(), destination, plan, event["results"])
        plan_path.unlink(missing_ok=True)
        return uri

    def _hook(self) -> CVATHook:
        from airflow_cvat.hooks.cvat import CVATHook

        return CVATHook(self.cvat_conn_id, status_check_period=self.status_check_period)

    def _validate(self) -> tuple[list[int], int | None]:
        """Refuse bad arguments before talking to CVAT or storage."""
        from airflow_cvat.coercion import parse_ids
        from airflow_cvat.manifest import FORMATS

        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {list(FORMATS)}, got {self.format!r}")
        task_ids = parse_ids(self.task_ids, "task_ids")
        project_ids = parse_ids(self.project_id, "project_id")
        sources = sum(map(bool, (task_ids, project_ids, self.source_uri)))
        if sources != 1:
            raise ValueError(
                "give exactly one source: task_ids, project_id, or source_uri "
                f"(got task_ids={self.task_ids!r}, project_id={self.project_id!r}, "
                f"source_uri={self.source_uri!r})"
            )
        if len(project_ids) > 1:
            raise ValueError(f"project_id takes one project, got {self.project_id!r}")
        return task_ids, (project_ids[0] if project_ids else None)

    def _writable_destination(self) -> ObjectStoragePath:
        """Fail on an unwritable destination now, not after an hour of exporting."""
        destination = ObjectStoragePath(self.destination, conn_id=self.storage_conn_id)
        probe = destination / ".write-probe"
        try:
            destination.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"ok")
            probe.unlink()
        except Exception as err:
            raise AirflowException(
                f"cannot write to destination {self.destination}: {type(err).__name__}: {err}. Check the "
                f"path, that the bucket exists, and the credentials of connection {self.storage_conn_id!r}"
            ) from None
        return destination

    # -- from CVAT: plan, start, finish -------------------------------------------------------

    def _plan(
        self, hook: CVATHook, destination: ObjectStoragePath, task_ids: list[int], project_id: int | None
    ) -> ExportPlan:
        """Select the work, fingerprint it, skip if unchanged, and choose task or job exports."""
        from airflow_cvat.operators.export_plan import ExportPlan, ExportUnit

        hook.get_conn()  # log in and check the server's version before anything else
        if project_id is not None:
            task_ids = [task.id for task in hook.get_project_tasks(project_id)]
        source = {
            "kind": "cvat",
            "server": hook.server_url,
            "server_version": hook.server_version,
            "organization": hook.organization,
            "project_id": project_id,
            "task_ids": task_ids,
        }
        jobs: list[SelectedJob] = []
        left_out: list[dict] = []
        whole_tasks: set[int] = set()
        for task_id in task_ids:
            selected, skipped, whole = self._select_jobs(hook, task_id)
            jobs += selected
            left_out += skipped
            if whole and self.prefer_task_exports:
                whole_tasks.add(task_id)
        if not jobs:
            raise AirflowSkipException(self._nothing_finished(source, left_out))

        labels = self._labels(hook, task_ids, project_id)
        digest = self._fingerprint(hook, jobs, labels)
        self._skip_if_unchanged(destination, digest)
        plan = ExportPlan(source, labels, digest, jobs, left_out)
        for task_id in dict.fromkeys(job.task_id for job in jobs):
            if task_id in whole_tasks:
                # Restrict nothing (no frame_names): the archive holds exactly the selected frames.
                frames = sorted({f for job in jobs if job.task_id == task_id for f in job.frames})
                plan.units.append(ExportUnit(task_id, None, frames, []))
            else:
                plan.units += [
                    ExportUnit(job.task_id, job.job_id, job.frames, job.frame_names)
                    for job in jobs
                    if job.task_id == task_id
                ]
        return plan

    def _select_jobs(self, hook: CVATHook, task_id: int) -> tuple[list[SelectedJob], list[dict], bool]:
        """The task's finished jobs, the others, and whether the finished ones are the whole task.

        Whole means every annotation job is selected and together they hold every frame of the
        task that is not deleted: only then is a task export the same data as the job exports.
        """
        from airflow_cvat.operators.export_plan import SelectedJob

        names, deleted = hook.get_task_frames(task_id)
        selected: list[SelectedJob] = []
        left_out: list[dict] = []
        unfinished_annotation_job = False
        jobs = hook.list_raw("jobs", f"jobs of task {task_id}", task_id=task_id)
        for job in sorted(jobs, key=lambda j: j["id"]):
            info = {"task_id": task_id, "job_id": job["id"], "type": job["type"], "state": job["state"]}
            info["stage"] = job["stage"]
            if not self._is_finished(info):
                left_out.append(info)
                unfinished_annotation_job |= info["type"] == "annotation"
                continue
            start, stop = job["start_frame"], job["stop_frame"]
            frames = [f for f in range(start, stop + 1) if f not in deleted]
            frame_names = [names[f] for f in frames if f < len(names)]
            selected.append(SelectedJob(task_id, job["id"], frames, frame_names, start, stop))
        covered = {f for job in selected for f in job.frames}
        every_frame = covered == {f for f in range(len(names)) if f not in deleted}
        return selected, left_out, bool(selected) and not unfinished_annotation_job and every_frame

    def _is_finished(self, job: dict) -> bool:
        if job["type"] != "annotation":  # ground truth and consensus replicas are not training data
            return False
        return self.all_jobs or (job["state"] in self.job_states and job["stage"] in self.job_stages)

    def _nothing_finished(self, source: dict, left_out: list[dict]) -> str:
        where = f"project {source['project_id']}" if source["project_id"] else f"task(s) {source['task_ids']}"
        found = ", ".join(
            f"job {j['job_id']} ({j['type']}, {j['state']}, {j['stage']})" for j in left_out[:20]
        )
        wanted = (
            "any annotation job"
            if self.all_jobs
            else (f"annotation jobs in state {list(self.job_states)} and stage {list(self.job_stages)}")
        )
        return (
            f"No finished work to export in {where} on {source['server']}: wanted {wanted}, found "
            f"{found or 'no jobs'}. Mark jobs completed in CVAT, or pass all_jobs=True to export everything."
        )

    def _labels(self, hook: CVATHook, task_ids: list[int], project_id: int | None) -> list[Label]:
        from airflow_cvat.manifest import Label

        raw = (
            hook.list_raw("labels", f"labels of project {project_id}", project_id=project_id)
            if project_id is not None
            else [
                label
                for task_id in task_ids
                for label in hook.list_raw("labels", f"labels of task {task_id}", task_id=task_id)
            ]
        )
        labels: dict[str, Label] = {}
        for label in raw:
            if label.get("parent_id") is None:  # skeleton points are not labels of their own
                labels.setdefault(
                    label["name"], Label(id=label["id"], name=label["name"], type=label["type"])
                )
        return list(labels.values())

    def _fingerprint(self, hook: CVATHook, jobs: list[SelectedJob], labels: list[Label]) -> str:
        """Hash what training would see, read cheaply from the annotations API before any export.

        One annotations request per task, split by the jobs' frame ranges: the same payload as a
        request per job, at a fraction of the requests.
        """
        from airflow_cvat.manifest import fingerprint

        by_task = {
            task_id: _strip_volatile(hook.get_task_annotations(task_id))
            for task_id in dict.fromkeys(job.task_id for job in jobs)
        }
        payload = {
            "format": self.format,
            "labels": sorted(label.name for label in labels),
            "jobs": [
                {
                    "job": job.job_id,
                    "frames": job.frame_names,
                    "annotations": _job_share(
                        by_task[job.task_id], range(job.start_frame, job.stop_frame + 1)
                    ),
                }
                for job in jobs
            ],
        }
        return fingerprint(payload)

    def _skip_if_unchanged(self, destination: ObjectStoragePath, digest: str) -> None:
        if not self.skip_unchanged:
            return
        latest = destination.parent / LATEST_NAME
        if not latest.exists():
            return
        record = json.loads(latest.read_text())
        if record.get("fingerprint") == digest:
            raise AirflowSkipException(
                f"Annotations unchanged since the export at {record.get('manifest')} (fingerprint {digest}); "
                "nothing new to train on. Pass skip_unchanged=False to export anyway."
            )

    def _start_exports(self, hook: CVATHook, plan: ExportPlan) -> dict[str, str]:
        """Queue every export before waiting for any; rq_id → what it exports."""
        requests: dict[str, str] = {}
        for unit in plan.units:
            resource, resource_id = ("tasks", unit.task_id) if unit.job_id is None else ("jobs", unit.job_id)
            unit.rq_id = hook.start_export(resource, resource_id, self.format, save_images=True)
            requests[unit.rq_id] = unit.what(self.format)
        self.log.info("Started %d CVAT export(s): %s", len(requests), ", ".join(requests.values()))
        return requests

    def _finish(
        self, hook: CVATHook, destination: ObjectStoragePath, plan: ExportPlan, urls: dict[str, str]
    ) -> str:
        archives = [self._download(hook, destination, unit, urls[unit.rq_id]) for unit in plan.units]
        _remove_stale_archives(destination, {archive.path for archive in archives})
        manifest = self._manifest(
            destination, plan.source, archives, plan.labels, plan.fingerprint, plan.left_out, plan.jobs
        )
        return self._publish(destination, manifest)

    def _download(
        self, hook: CVATHook, destination: ObjectStoragePath, unit: ExportUnit, url: str
    ) -> Archive:
        from airflow_cvat.manifest import Archive

        what = unit.what(self.format)
        self.log.info("Downloading %s into %s", what, plain_uri(destination / unit.path))
        size, sha = _stream_to(destination / unit.path, hook.iter_download(url, what=what))
        archive = Archive(
            unit.path, self.format, size, sha, unit.task_id, unit.job_id, unit.frames, unit.frame_names
        )
        self._check_archive(destination / unit.path, archive, what)
        return archive

    # -- from object storage ------------------------------------------------------------------

    def _import_from_storage(self, destination: ObjectStoragePath) -> Manifest:
        from airflow_cvat.export_archive import detect_format, read_labels_and_images
        from airflow_cvat.manifest import Archive, Label

        source = ObjectStoragePath(self.source_uri, conn_id=self.storage_conn_id)
        if not source.is_file():
            raise AirflowException(
                f"source_uri {self.source_uri} does not exist or is not a file: give the URI of a CVAT "
                "export zip (COCO 1.0 or CVAT for images 1.1, with images)"
            )
        with source.open("rb") as fh:
            if not zipfile.is_zipfile(fh):
                raise AirflowException(
                    f"source_uri {self.source_uri} is not a zip archive: give the URI of a CVAT export zip"
                )
        path = f"archives/{source.name}"
        with source.open("rb") as fh:
            size, sha = _stream_to(destination / path, iter(lambda: fh.read(COPY_CHUNK), b""))
        with (destination / path).open("rb") as fh, zipfile.ZipFile(fh) as zf:
            fmt = detect_format(zf)
            label_names, images = read_labels_and_images(zf)
            annotation_bytes = zf.read(_annotation_member(zf, fmt))
        archive = Archive(path, fmt, size, sha, frame_names=[image.name for image in images])
        labels = [Label(id=i, name=name) for i, name in enumerate(label_names, start=1)]
        digest = "sha256:" + hashlib.sha256(annotation_bytes).hexdigest()
        self._skip_if_unchanged(destination, digest)
        source_info = {"kind": "storage", "uri": self.source_uri}
        return self._manifest(destination, source_info, [archive], labels, digest, [])

    # -- manifest -----------------------------------------------------------------------------

    def _check_archive(self, path: ObjectStoragePath, archive: Archive, what: str) -> None:
        """A zip that does not open is CVAT's fault or a broken transfer: say so, keep nothing.

        The central directory and the annotation files are read (their CRCs checked); the images
        are not re-read here: the download was already hashed as it streamed, a short one fails
        on its Content-Length, and prepare decodes every image and counts any it cannot.
        """
        from airflow_cvat.export_archive import CVAT_IMAGES, ArchiveError, detect_format
        from airflow_cvat.hooks.cvat import CVATError

        try:
            with path.open("rb") as fh, zipfile.ZipFile(fh) as zf:
                fmt = detect_format(zf)
                members = ["annotations.xml"] if fmt == CVAT_IMAGES else _coco_members(zf)
                for member in members:
                    with zf.open(member) as annotations:
                        while annotations.read(COPY_CHUNK):
                            pass
        except (zipfile.BadZipFile, ArchiveError) as err:
            path.unlink(missing_ok=True)
            raise CVATError(
                f"CVAT sent a malformed archive for the {what} ({archive.size} bytes): {err}. Retry the "
                "task; if it persists, check the CVAT server's export worker logs"
            ) from None

    def _manifest(
        self,
        destination: ObjectStoragePath,
        source: dict,
        archives: list[Archive],
        labels: list[Label],
        digest: str,
        left_out: list[dict],
        jobs: list[SelectedJob] = (),
    ) -> Manifest:
        """Counts read from the archives as written; which jobs and frames went in, which did not.

        ``selection.jobs`` names the selected jobs and their frames whether they arrived as one
        task archive or one archive per job, so the manifest reads the same either way.
        """
        from airflow_cvat.export_archive import iter_selected, read_labels_and_images
        from airflow_cvat.manifest import Manifest

        counts: Counter[str] = Counter()
        images = 0
        for archive in archives:
            with (destination / archive.path).open("rb") as fh, zipfile.ZipFile(fh) as zf:
                _, archive_images = read_labels_and_images(zf)
            for image in iter_selected(archive_images, archive.frame_names):
                images += 1
                counts.update(shape.label for shape in image.shapes)
        return Manifest(
            source=source,
            format=archives[0].format,
            archives=archives,
            labels=labels,
            label_counts={label.name: counts.get(label.name, 0) for label in labels},
            images=images,
            fingerprint=digest,
            selection={
                "all_jobs": self.all_jobs,
                "job_states": list(self.job_states),
                "job_stages": list(self.job_stages),
                "jobs": [{"task_id": j.task_id, "job_id": j.job_id, "frames": j.frames} for j in jobs],
            },
            jobs_left_out=left_out,
            created=datetime.now(UTC).isoformat(),
        )

    def _publish(self, destination: ObjectStoragePath, manifest: Manifest) -> str:
        from airflow_cvat.manifest import MANIFEST_NAME

        manifest_path = destination / MANIFEST_NAME
        manifest_path.write_text(manifest.to_json())
        uri = plain_uri(manifest_path)
        if self.record_latest:
            _write_latest(destination.parent, manifest.fingerprint, uri)
        self.log.info(
            "Exported %d images (%s) from %s into %s; labels: %s",
            manifest.images,
            manifest.format,
            manifest.source,
            uri,
            manifest.label_counts,
        )
        return uri


def record_latest_export(manifest_uri: str, storage_conn_id: str | None = None) -> str:
    """Mark a finished export as the last one of its source (what skip_unchanged compares with).

    For pipelines that pass record_latest=False and call this once the model trained on the
    export is published, so that a failed training is retried by the next run, not skipped.
    """
    from airflow_cvat.manifest import Manifest

    manifest_path = ObjectStoragePath(manifest_uri, conn_id=storage_conn_id)
    manifest = Manifest.from_json(manifest_path.read_text())
    return _write_latest(manifest_path.parent.parent, manifest.fingerprint, manifest_uri)


class RecordDatasetOperator(BaseOperator):
    """Record an export as trained on, once the model trained on it is published.

    Why a task of its own: the export runs with ``record_latest=False``, so a failed training is
    retried by the next nightly run instead of being skipped as "unchanged".

    :param manifest_uri: the export's manifest (CVATExportOperator's XCom).
    :param storage_conn_id: connection for the artifact root (None: the worker's own credentials).
    :return: the URI of the marker written.
    """

    template_fields: Sequence[str] = ("manifest_uri",)

    def __init__(self, *, manifest_uri: str, storage_conn_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.manifest_uri = manifest_uri
        self.storage_conn_id = storage_conn_id

    def execute(self, context: Context) -> str:
        return record_latest_export(self.manifest_uri, self.storage_conn_id)


def _write_latest(source_folder: ObjectStoragePath, digest: str, manifest_uri: str) -> str:
    latest = source_folder / LATEST_NAME
    latest.write_text(json.dumps({"fingerprint": digest, "manifest": manifest_uri}))
    return plain_uri(latest)


def plain_uri(path: ObjectStoragePath) -> str:
    """The URI without ObjectStoragePath's embedded conn_id, for XCom and for the trainer."""
    return f"{path.protocol}://{path.path}"


def _stream_to(path: ObjectStoragePath, chunks: Iterable[bytes]) -> tuple[int, str]:
    """Write chunks to storage as they come, hashing on the way; memory holds one chunk."""
    sha = hashlib.sha256()
    size = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        for chunk in chunks:
            sha.update(chunk)
            size += len(chunk)
            out.write(chunk)
    return size, sha.hexdigest()


def _remove_stale_archives(destination: ObjectStoragePath, keep: set[str]) -> None:
    """Delete archives an earlier try left that this export does not list (a retry resumes clean)."""
    folder = destination / "archives"
    if not folder.exists():
        return
    for path in folder.iterdir():
        if path.name.endswith(".zip") and f"archives/{path.name}" not in keep:
            path.unlink(missing_ok=True)


def _job_share(annotations: dict[str, Any], frames: range) -> dict[str, Any]:
    """A job's part of its task's annotations: tags and shapes on its frames, tracks clipped to them.

    What ``GET /api/jobs/{id}/annotations`` answers, cut from one read of the task's, so that
    the fingerprint is the same whichever way the annotations were read.
    """
    share: dict[str, Any] = {}
    for key, value in annotations.items():
        if not isinstance(value, list):
            share[key] = value
        elif key == "tracks":
            tracks = []
            for track in value:
                shapes = [s for s in track.get("shapes", []) if s.get("frame") in frames]
                if shapes:
                    tracks.append({**track, "shapes": shapes})
            share[key] = tracks
        else:
            share[key] = [
                item for item in value if not isinstance(item, dict) or item.get("frame", -1) in frames
            ]
    return share


def _coco_members(zf: zipfile.ZipFile) -> list[str]:
    return sorted(n for n in zf.namelist() if n.startswith("annotations/instances_") and n.endswith(".json"))


def _annotation_member(zf: zipfile.ZipFile, fmt: str) -> str:
    from airflow_cvat.export_archive import CVAT_IMAGES

    if fmt == CVAT_IMAGES:
        return "annotations.xml"
    return next(n for n in sorted(zf.namelist()) if n.startswith("annotations/instances_"))
