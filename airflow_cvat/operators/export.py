"""CVATExportOperator: finished annotation work from CVAT into object storage, with a manifest.

Each selected job is exported on its own through CVAT's asynchronous export API. That is how the
dataset is restricted to the frames of finished jobs: CVAT has no "completed jobs only" export,
but a job export holds exactly that job's frames. Archives stream straight into the destination
(file://, s3://, anything ObjectStoragePath reaches) and manifest.json is written last, so a
dataset folder without a manifest is never taken for a finished export.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, ObjectStoragePath
from airflow.sdk.exceptions import AirflowException, AirflowSkipException

from airflow_cvat.export_archive import (
    CVAT_IMAGES,
    ArchiveError,
    detect_format,
    iter_selected,
    read_labels_and_images,
)
from airflow_cvat.hooks.cvat import CVATError, CVATHook
from airflow_cvat.manifest import FORMATS, MANIFEST_NAME, Archive, Label, Manifest, fingerprint

if TYPE_CHECKING:
    from airflow.sdk import Context

LATEST_NAME = "LATEST.json"
COPY_CHUNK = 1 << 20
# Fields of CVAT's annotation objects that change without the annotation changing.
_VOLATILE_KEYS = frozenset({"id", "version", "created_date", "updated_date"})


@dataclass
class SelectedJob:
    task_id: int
    job_id: int
    frames: list[int]
    frame_names: list[str]


def parse_ids(value: Any, name: str) -> list[int]:
    """Ids as users give them: 3, [3, 4], "3,4" or "[3, 4]" (a rendered template)."""
    if value is None or value == "" or value == []:
        return []
    if isinstance(value, str):
        text = value.strip().strip("[]")
        items: Iterable[Any] = [v for v in text.replace(" ", "").split(",") if v]
    elif isinstance(value, int):
        items = [value]
    else:
        items = value
    try:
        return [int(v) for v in items]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be CVAT ids (integers), e.g. [12, 13]; got {value!r}") from None


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

    def __init__(
        self,
        *,
        destination: str,
        task_ids: Any = None,
        project_id: Any = None,
        source_uri: str | None = None,
        cvat_conn_id: str = CVATHook.default_conn_name,
        storage_conn_id: str | None = None,
        format: str = "COCO 1.0",
        job_states: Sequence[str] = ("completed",),
        job_stages: Sequence[str] = ("acceptance",),
        all_jobs: bool = False,
        skip_unchanged: bool = True,
        record_latest: bool = True,
        export_timeout: float = 3600,
        status_check_period: float = 2.0,
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

    # -- entry point --------------------------------------------------------------------------

    def execute(self, context: Context) -> str:
        task_ids, project_id = self._validate()
        destination = self._writable_destination()
        if self.source_uri:
            manifest = self._import_from_storage(destination)
        else:
            manifest = self._export_from_cvat(destination, task_ids, project_id)
        return self._publish(destination, manifest)

    def _validate(self) -> tuple[list[int], int | None]:
        """Refuse bad arguments before talking to CVAT or storage."""
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

    # -- from CVAT ----------------------------------------------------------------------------

    def _export_from_cvat(
        self, destination: ObjectStoragePath, task_ids: list[int], project_id: int | None
    ) -> Manifest:
        hook = CVATHook(self.cvat_conn_id, status_check_period=self.status_check_period)
        if project_id is not None:
            task_ids = [task.id for task in hook.get_project_tasks(project_id)]
        jobs, left_out = self._select_jobs(hook, task_ids)
        source = {
            "kind": "cvat",
            "server": hook.server_url,
            "server_version": hook.server_version,
            "organization": hook.organization,
            "project_id": project_id,
            "task_ids": task_ids,
        }
        if not jobs:
            raise AirflowSkipException(self._nothing_finished(source, left_out))

        labels = self._labels(hook, task_ids, project_id)
        digest = self._fingerprint(hook, jobs, labels)
        self._skip_if_unchanged(destination, digest)

        archives = [self._export_job(hook, destination, job) for job in jobs]
        return self._manifest(destination, source, archives, labels, digest, left_out)

    def _select_jobs(self, hook: CVATHook, task_ids: list[int]) -> tuple[list[SelectedJob], list[dict]]:
        selected: list[SelectedJob] = []
        left_out: list[dict] = []
        for task_id in task_ids:
            meta = hook.get_task_meta(task_id)
            names = [frame.name for frame in meta.frames]
            deleted = set(meta.deleted_frames or [])
            for job in sorted(hook.get_jobs(task_id), key=lambda j: j.id):
                info = {"task_id": task_id, "job_id": job.id, "type": str(job.type), "state": str(job.state)}
                info["stage"] = str(job.stage)
                if not self._is_finished(info):
                    left_out.append(info)
                    continue
                frames = [f for f in range(job.start_frame, job.stop_frame + 1) if f not in deleted]
                frame_names = [names[f] for f in frames if f < len(names)]
                selected.append(SelectedJob(task_id, job.id, frames, frame_names))
        return selected, left_out

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
        raw = (
            hook.get_labels(project_id=project_id)
            if project_id is not None
            else [label for task_id in task_ids for label in hook.get_labels(task_id=task_id)]
        )
        labels: dict[str, Label] = {}
        for label in raw:
            labels.setdefault(label.name, Label(id=label.id, name=label.name, type=str(label.type)))
        return list(labels.values())

    def _fingerprint(self, hook: CVATHook, jobs: list[SelectedJob], labels: list[Label]) -> str:
        """Hash what training would see, read cheaply from the annotations API before any export."""
        payload = {
            "format": self.format,
            "labels": sorted(label.name for label in labels),
            "jobs": [
                {
                    "job": job.job_id,
                    "frames": job.frame_names,
                    "annotations": _strip_volatile(hook.get_job_annotations(job.job_id)),
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

    def _export_job(self, hook: CVATHook, destination: ObjectStoragePath, job: SelectedJob) -> Archive:
        what = f"export of job {job.job_id} (task {job.task_id}) as {self.format!r}"
        rq_id = hook.start_export("jobs", job.job_id, self.format, save_images=True)
        url = hook.wait_for_export(rq_id, timeout=self.export_timeout, what=what)
        path = f"archives/task-{job.task_id}-job-{job.job_id}.zip"
        self.log.info("Downloading %s into %s", what, plain_uri(destination / path))
        size, sha = _stream_to(destination / path, hook.iter_download(url, what=what))
        archive = Archive(path, self.format, size, sha, job.task_id, job.job_id, job.frames, job.frame_names)
        self._check_archive(destination / path, archive, what)
        return archive

    # -- from object storage ------------------------------------------------------------------

    def _import_from_storage(self, destination: ObjectStoragePath) -> Manifest:
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
        """A zip that does not open is CVAT's fault or a broken transfer: say so, keep nothing."""
        try:
            with path.open("rb") as fh, zipfile.ZipFile(fh) as zf:
                detect_format(zf)
                bad = zf.testzip()
                if bad:
                    raise zipfile.BadZipFile(f"member {bad} is corrupt")
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
    ) -> Manifest:
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
            },
            jobs_left_out=left_out,
            created=datetime.now(UTC).isoformat(),
        )

    def _publish(self, destination: ObjectStoragePath, manifest: Manifest) -> str:
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
    manifest_path = ObjectStoragePath(manifest_uri, conn_id=storage_conn_id)
    manifest = Manifest.from_json(manifest_path.read_text())
    return _write_latest(manifest_path.parent.parent, manifest.fingerprint, manifest_uri)


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


def _annotation_member(zf: zipfile.ZipFile, fmt: str) -> str:
    if fmt == CVAT_IMAGES:
        return "annotations.xml"
    return next(n for n in sorted(zf.namelist()) if n.startswith("annotations/instances_"))
