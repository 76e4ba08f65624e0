"""CVATExportOperator run by Airflow (dag.test) against the CVAT double, on file:// and moto S3."""

from __future__ import annotations

import json
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from airflow_cvat.export_archive import read_labels_and_images
from airflow_cvat.manifest import Manifest
from tests.fixtures.airflow import connection_env, task_states, xcom

TOKEN_PREFIX = "secret-token-"

DAG_SOURCE = """
import pendulum
from airflow.sdk import DAG
from airflow_cvat.operators.export import CVATExportOperator

with DAG("export", schedule=None, start_date=pendulum.datetime(2025, 1, 1), catchup=False):
    CVATExportOperator(task_id="export", status_check_period=0.05, **{kwargs!r})
"""


@pytest.fixture
def cvat(cvat_double, monkeypatch):
    """The double with a task of 10 frames in two jobs, and a `cvat_default` connection to it."""
    token = TOKEN_PREFIX + "abc123"
    cvat_double.tokens[token] = cvat_double.DEFAULT_USERNAME
    key, value = connection_env("cvat_default", conn_type="cvat", host=cvat_double.url, password=token)
    monkeypatch.setenv(key, value)
    cvat_double.token = token
    return cvat_double


PER_JOB_DAG_SOURCE = """
import pendulum
from airflow.sdk import DAG
from airflow_cvat.operators.export import CVATExportOperator

class PerJobExport(CVATExportOperator):
    prefer_task_exports = False

with DAG("export_per_job", schedule=None, start_date=pendulum.datetime(2025, 1, 1), catchup=False):
    PerJobExport(task_id="export", status_check_period=0.05, **{kwargs!r})
"""


@pytest.fixture
def export(run_dag):
    def run(**kwargs):
        return run_dag(DAG_SOURCE.format(kwargs=kwargs), "export")

    return run


@pytest.fixture
def export_per_job(run_dag):
    """The same operator forced to export job by job, to compare with a whole-task export."""

    def run(**kwargs):
        return run_dag(PER_JOB_DAG_SOURCE.format(kwargs=kwargs), "export_per_job")

    return run


def finished_task(cvat, frames: int = 10, segment_size: int = 5, finished: int = 1) -> tuple[int, list[int]]:
    task_id = cvat.add_task("shapes", frames=frames, segment_size=segment_size)
    jobs = sorted(cvat.job_ids(task_id))
    for job_id in jobs[:finished]:
        cvat.set_job(job_id, state="completed", stage="acceptance")
    return task_id, jobs


def load_manifest(uri: str) -> Manifest:
    from airflow.sdk import ObjectStoragePath

    return Manifest.from_json(ObjectStoragePath(uri).read_text())


def test_exports_only_finished_jobs_to_file_storage(cvat, export, tmp_path: Path):
    task_id, jobs = finished_task(cvat)
    destination = tmp_path / "datasets" / "task" / "run1"

    run = export(task_ids=[task_id], destination=f"file://{destination}")

    assert task_states(run) == {"export": "success"}
    manifest_uri = xcom(run, "export")
    assert manifest_uri.endswith("run1/manifest.json")
    manifest = load_manifest(manifest_uri)
    assert [a.job_id for a in manifest.archives] == [jobs[0]]
    assert manifest.archives[0].frames == [0, 1, 2, 3, 4]
    assert manifest.images == 5
    assert manifest.source["server_version"] == "2.73.0"
    assert manifest.source["task_ids"] == [task_id]
    assert [j["job_id"] for j in manifest.jobs_left_out] == [jobs[1]]
    assert [label.name for label in manifest.labels] == ["circle", "square", "triangle"]
    # Counts are those of the double's stored shapes on frames 0-4, label ids mapped to names.
    names = {label.id: label.name for label in manifest.labels}
    expected = Counter(names[s["label_id"]] for s in cvat.annotations(task_id) if s["frame"] < 5)
    assert manifest.label_counts == {name: expected.get(name, 0) for name in names.values()}
    with zipfile.ZipFile(destination / manifest.archives[0].path) as zf:
        _, images = read_labels_and_images(zf)
    assert sorted(image.name for image in images) == sorted(manifest.archives[0].frame_names)
    assert (destination.parent / "LATEST.json").exists()


def comparable(manifest: Manifest) -> dict:
    """What a manifest says about the data, leaving out how it was packed (archives) and when."""
    data = json.loads(manifest.to_json())
    for key in ("archives", "created"):
        data.pop(key)
    return data


def test_whole_task_is_one_export_with_the_same_manifest_as_job_exports(
    cvat, export, export_per_job, tmp_path: Path
):
    task_id, jobs = finished_task(cvat, frames=20, segment_size=5, finished=4)
    cvat.delete_frames(task_id, [6])
    cvat.clear_log()

    whole = export(task_ids=[task_id], destination=f"file://{tmp_path}/a/run")

    assert task_states(whole) == {"export": "success"}
    assert [r.path for r in cvat.requests_to("POST", r"/dataset/export")] == [
        f"/api/tasks/{task_id}/dataset/export"
    ]
    # The fingerprint reads the task's annotations once, not each job's.
    assert len(cvat.requests_to("GET", rf"^/api/tasks/{task_id}/annotations")) == 1
    assert not cvat.requests_to("GET", r"^/api/jobs/\d+/annotations")
    manifest = load_manifest(xcom(whole, "export"))
    assert [(a.path, a.task_id, a.job_id, a.frame_names) for a in manifest.archives] == [
        (f"archives/task-{task_id}.zip", task_id, None, [])
    ]
    assert manifest.archives[0].frames == [f for f in range(20) if f != 6]
    assert manifest.images == 19
    assert [j["job_id"] for j in manifest.selection["jobs"]] == jobs
    assert manifest.selection["jobs"][1]["frames"] == [5, 7, 8, 9]

    per_job = export_per_job(task_ids=[task_id], destination=f"file://{tmp_path}/b/run")

    other = load_manifest(xcom(per_job, "export"))
    assert [a.job_id for a in other.archives] == jobs
    assert comparable(other) == comparable(manifest)  # same jobs, frames, counts and fingerprint


def test_some_jobs_unfinished_exports_those_jobs_side_by_side(cvat, export, tmp_path: Path):
    task_id, jobs = finished_task(cvat, frames=20, segment_size=5, finished=3)
    stale = tmp_path / "d" / "run" / "archives" / f"task-{task_id}.zip"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left by an earlier try of this export")
    cvat.clear_log()

    run = export(task_ids=[task_id], destination=f"file://{tmp_path}/d/run")

    manifest = load_manifest(xcom(run, "export"))
    assert [a.job_id for a in manifest.archives] == jobs[:3]
    assert [j["job_id"] for j in manifest.jobs_left_out] == [jobs[3]]
    assert manifest.images == 15
    # Every export is queued before the first status poll: CVAT's workers run them together.
    exchanges = [r for r in cvat.log if "/dataset/export" in r.path or r.path.startswith("/api/requests/")]
    assert [r.method for r in exchanges[:3]] == ["POST"] * 3
    assert len(cvat.requests_to("GET", r"^/api/tasks/\d+/annotations")) == 1
    assert not stale.exists()  # an archive the manifest does not list is not left beside it


def test_exports_to_s3(cvat, export, s3_bucket):
    import boto3

    task_id, _ = finished_task(cvat, finished=2)
    run = export(
        task_ids=str(task_id),
        destination=f"s3://{s3_bucket}/datasets/t/run1",
        storage_conn_id="aws_default",
        format="CVAT for images 1.1",
    )

    assert task_states(run) == {"export": "success"}
    assert xcom(run, "export") == f"s3://{s3_bucket}/datasets/t/run1/manifest.json"
    keys = {o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=s3_bucket)["Contents"]}
    assert "datasets/t/run1/manifest.json" in keys
    # Both jobs finished: the whole task in one export.
    assert [k for k in keys if k.startswith("datasets/t/run1/archives/")] == [
        f"datasets/t/run1/archives/task-{task_id}.zip"
    ]
    body = boto3.client("s3").get_object(Bucket=s3_bucket, Key="datasets/t/run1/manifest.json")["Body"]
    manifest = Manifest.from_json(body.read().decode())
    assert manifest.format == "CVAT for images 1.1"
    assert manifest.images == 10


def test_project_source_leaves_out_ground_truth_and_deleted_frames(cvat, export, tmp_path: Path):
    project_id = cvat.add_project("p", labels=["circle", "square"])
    first = cvat.add_task("a", frames=6, segment_size=3, project_id=project_id)
    second = cvat.add_task("b", frames=4, segment_size=4, project_id=project_id)
    for job_id in cvat.job_ids(first) + cvat.job_ids(second):
        cvat.set_job(job_id, state="completed", stage="acceptance")
    gt = cvat.add_ground_truth_job(first, [0, 1])
    cvat.set_job(gt, state="completed", stage="acceptance")
    cvat.delete_frames(first, [1])

    run = export(project_id=project_id, destination=f"file://{tmp_path}/d/run")

    manifest = load_manifest(xcom(run, "export"))
    assert manifest.source["project_id"] == project_id
    assert sorted(manifest.source["task_ids"]) == sorted([first, second])
    assert gt not in [a.job_id for a in manifest.archives]
    assert {"job_id": gt, "type": "ground_truth"}.items() <= next(
        j for j in manifest.jobs_left_out if j["job_id"] == gt
    ).items()
    first_frames = [f for a in manifest.archives if a.task_id == first for f in a.frames]
    assert first_frames == [0, 2, 3, 4, 5]
    assert manifest.images == 5 + 4


def test_skips_when_no_job_is_finished(cvat, export, tmp_path: Path, capfd):
    task_id, _ = finished_task(cvat, finished=0)
    run = export(task_ids=[task_id], destination=f"file://{tmp_path}/d/run")
    assert task_states(run) == {"export": "skipped"}
    text = "".join(capfd.readouterr())
    assert "No finished work" in text and "all_jobs=True" in text
    assert not cvat.requests_to("POST", r"/dataset/export")
    assert not (tmp_path / "d" / "run" / "manifest.json").exists()


def test_all_jobs_takes_unfinished_work(cvat, export, tmp_path: Path):
    task_id, _ = finished_task(cvat, finished=0)
    run = export(task_ids=[task_id], all_jobs=True, destination=f"file://{tmp_path}/d/run")
    assert load_manifest(xcom(run, "export")).images == 10


def test_unchanged_annotations_skip_and_changed_ones_export(cvat, export, tmp_path: Path):
    task_id, jobs = finished_task(cvat)
    first = export(task_ids=[task_id], destination=f"file://{tmp_path}/d/run1")
    assert task_states(first) == {"export": "success"}
    exports_before = len(cvat.requests_to("POST", r"/dataset/export"))

    again = export(task_ids=[task_id], destination=f"file://{tmp_path}/d/run2")
    assert task_states(again) == {"export": "skipped"}
    assert len(cvat.requests_to("POST", r"/dataset/export")) == exports_before  # skipped before exporting

    cvat.set_job(jobs[1], state="completed", stage="acceptance")
    changed = export(task_ids=[task_id], destination=f"file://{tmp_path}/d/run3")
    assert task_states(changed) == {"export": "success"}
    assert load_manifest(xcom(changed, "export")).images == 10


def test_source_uri_imports_an_export_already_in_storage(export, tmp_path: Path):
    from demo_data.synthetic import write_export_file

    zip_path = tmp_path / "from-cvat.zip"
    write_export_file(zip_path, 12, format="COCO 1.0")
    run = export(source_uri=f"file://{zip_path}", destination=f"file://{tmp_path}/d/run")

    manifest = load_manifest(xcom(run, "export"))
    assert manifest.source == {"kind": "storage", "uri": f"file://{zip_path}"}
    assert manifest.images == 12
    assert manifest.format == "COCO 1.0"
    assert (tmp_path / "d" / "run" / manifest.archives[0].path).read_bytes() == zip_path.read_bytes()


def test_password_login_and_organization(cvat_double, export, monkeypatch, tmp_path: Path):
    cvat_double.add_organization("team-a")
    task_id = cvat_double.add_task("org-task", frames=4, segment_size=4, organization="team-a")
    cvat_double.set_job(cvat_double.job_ids(task_id)[0], state="completed", stage="acceptance")
    key, value = connection_env(
        "cvat_default",
        conn_type="cvat",
        host=cvat_double.url,
        login=cvat_double.DEFAULT_USERNAME,
        password=cvat_double.DEFAULT_PASSWORD,
        extra={"organization": "team-a"},
    )
    monkeypatch.setenv(key, value)

    run = export(task_ids=[task_id], destination=f"file://{tmp_path}/d/run")

    assert task_states(run) == {"export": "success"}
    assert cvat_double.requests_to("POST", r"/api/auth/login")
    exports = cvat_double.requests_to("POST", r"/dataset/export")
    assert exports and all(r.header("X-Organization") == "team-a" for r in exports)


def test_retries_a_500_then_succeeds(cvat, export, tmp_path: Path):
    task_id, _ = finished_task(cvat)
    cvat.fail_next("POST", r"/dataset/export", 500, times=1)
    cvat.fail_next("GET", r"/api/requests/", 503, times=1)
    run = export(task_ids=[task_id], destination=f"file://{tmp_path}/d/run")
    assert task_states(run) == {"export": "success"}
    assert len(cvat.requests_to("POST", r"/dataset/export")) == 2


# -- failures: the message says what was wrong, no secret leaks, nothing half-written is kept --


def failed_with(run, capfd) -> str:
    """The task failed; return what it logged (Airflow's task logs go to the console here)."""
    assert task_states(run) == {"export": "failed"}
    return "".join(capfd.readouterr())


def test_wrong_token(cvat, export, monkeypatch, tmp_path: Path, capfd):
    task_id, _ = finished_task(cvat)
    wrong = TOKEN_PREFIX + "wrong"
    key, value = connection_env("cvat_default", conn_type="cvat", host=cvat.url, password=wrong)
    monkeypatch.setenv(key, value)
    text = failed_with(export(task_ids=[task_id], destination=f"file://{tmp_path}/d/r"), capfd)
    assert "answered 401" in text and "personal access token" in text
    assert wrong not in text


def test_unknown_task(cvat, export, tmp_path: Path, capfd):
    text = failed_with(export(task_ids=[999], destination=f"file://{tmp_path}/d/r"), capfd)
    assert "answered 404" in text and "task 999" in text and "does not exist" in text
    assert cvat.token not in text


def test_cvat_export_failure_carries_cvats_message(cvat, export, tmp_path: Path, capfd):
    task_id, _ = finished_task(cvat)
    cvat.fail_exports("Not enough disk space on the export worker")
    text = failed_with(export(task_ids=[task_id], destination=f"file://{tmp_path}/d/r"), capfd)
    assert "Not enough disk space on the export worker" in text
    assert not (tmp_path / "d" / "r" / "manifest.json").exists()


def test_export_timeout_is_a_clear_error(cvat, export, tmp_path: Path, capfd):
    task_id, _ = finished_task(cvat)
    cvat.export_polls_before_finish = 10_000
    text = failed_with(
        export(task_ids=[task_id], export_timeout=0.5, destination=f"file://{tmp_path}/d/r"), capfd
    )
    assert "did not finish" in text and "export_timeout" in text


def test_malformed_zip_is_refused_and_not_kept(cvat, export, tmp_path: Path, capfd):
    task_id, _ = finished_task(cvat)
    cvat.malformed_zip = True
    text = failed_with(export(task_ids=[task_id], destination=f"file://{tmp_path}/d/r"), capfd)
    assert "malformed archive" in text
    run_dir = tmp_path / "d" / "r"
    assert not (run_dir / "manifest.json").exists()
    assert not list(run_dir.glob("archives/*.zip"))
    assert not (tmp_path / "d" / "LATEST.json").exists()


def test_unwritable_destination_fails_before_exporting(cvat, export, tmp_path: Path, capfd):
    task_id, _ = finished_task(cvat)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where a folder should be")
    text = failed_with(export(task_ids=[task_id], destination=f"file://{blocker}/run"), capfd)
    assert "cannot write to destination" in text
    assert not cvat.requests_to("POST", r"/dataset/export")


def test_old_server_is_refused_with_its_version(cvat, export, tmp_path: Path, capfd):
    task_id, _ = finished_task(cvat)
    cvat.version = "2.10.0"
    text = failed_with(export(task_ids=[task_id], destination=f"file://{tmp_path}/d/r"), capfd)
    assert "version 2.10.0" in text and "2.16" in text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task_ids": "1,x"}, "task_ids must be CVAT ids"),
        ({"task_ids": [1], "project_id": 2}, "exactly one source"),
        ({}, "exactly one source"),
        ({"task_ids": [1], "format": "TFRecord 1.0"}, "format must be one of"),
    ],
)
def test_bad_arguments_fail_before_any_request(cvat, export, tmp_path: Path, capfd, kwargs, message):
    text = failed_with(export(destination=f"file://{tmp_path}/d/r", **kwargs), capfd)
    assert message in text
    assert not cvat.log


def test_manifest_round_trips_and_rejects_unknown_schema():
    manifest = Manifest(
        source={"kind": "storage"}, format="COCO 1.0", archives=[], labels=[], label_counts={},
        images=0, fingerprint="sha256:0",
    )  # fmt: skip
    assert Manifest.from_json(manifest.to_json()) == manifest
    data = json.loads(manifest.to_json()) | {"schema": 99}
    with pytest.raises(ValueError, match="schema 99"):
        Manifest.from_json(json.dumps(data))


# -- deferrable: the wait runs in the trigger, not in a worker slot --------------------------


def test_deferred_export_resumes_from_its_trigger(cvat, export, tmp_path: Path, capfd, caplog):
    task_id, _ = finished_task(cvat, finished=2)
    cvat.export_polls_before_finish = 3
    destination = tmp_path / "d" / "run"

    run = export(task_ids=[task_id], deferrable=True, destination=f"file://{destination}")

    assert task_states(run) == {"export": "success"}
    manifest = load_manifest(xcom(run, "export"))
    assert manifest.images == 10
    assert [a.path for a in manifest.archives] == [f"archives/task-{task_id}.zip"]
    assert not (destination / "export-plan.json").exists()  # the plan is gone once the manifest is there
    # Every status poll came from the trigger (httpx), with the token it read from the connection.
    polls = cvat.requests_to("GET", r"^/api/requests/")
    assert len(polls) == 4  # three "started", then "finished"
    assert all("httpx" in (r.header("User-Agent") or "") for r in polls)
    assert all(r.header("Authorization") == f"Bearer {cvat.token}" for r in polls)
    assert "running trigger in line" in caplog.text  # the task deferred, then resumed
    assert cvat.token not in "".join(capfd.readouterr()) + caplog.text


def test_deferred_export_failure_names_the_task_and_cvats_message(cvat, export, tmp_path: Path, capfd):
    task_id, _ = finished_task(cvat, finished=2)
    cvat.fail_exports("Not enough disk space on the export worker")

    text = failed_with(
        export(task_ids=[task_id], deferrable=True, destination=f"file://{tmp_path}/d/r"), capfd
    )

    assert (
        f"failed export of task {task_id} as 'COCO 1.0': Not enough disk space on the export worker" in text
    )
    assert not (tmp_path / "d" / "r" / "manifest.json").exists()


def test_trigger_carries_no_secret_and_logs_in_with_a_password(cvat_double, monkeypatch):
    import asyncio

    from airflow_cvat.triggers.cvat import CVATRequestTrigger

    cvat_double.add_organization("team-a")
    task_id = cvat_double.add_task("org-task", frames=4, segment_size=4, organization="team-a")
    key, value = connection_env(
        "cvat_team",
        conn_type="cvat",
        host=cvat_double.url,
        login=cvat_double.DEFAULT_USERNAME,
        password=cvat_double.DEFAULT_PASSWORD,
        extra={"organization": "team-a"},
    )
    monkeypatch.setenv(key, value)
    import requests

    started = requests.post(
        f"{cvat_double.url}/api/tasks/{task_id}/dataset/export",
        params={"format": "COCO 1.0", "save_images": "true"},
        auth=(cvat_double.DEFAULT_USERNAME, cvat_double.DEFAULT_PASSWORD),
        headers={"X-Organization": "team-a"},
    )
    rq_id = started.json()["rq_id"]
    trigger = CVATRequestTrigger({rq_id: f"export of task {task_id}"}, "cvat_team", poll_interval=0.05)

    classpath, kwargs = trigger.serialize()
    assert cvat_double.DEFAULT_PASSWORD not in json.dumps(kwargs)
    events = asyncio.run(collect(type(trigger)(**kwargs).run()))

    assert classpath == "airflow_cvat.triggers.cvat.CVATRequestTrigger"
    assert [e.payload["status"] for e in events] == ["success"]
    assert events[0].payload["results"][rq_id].startswith(f"{cvat_double.url}/api/tasks/{task_id}/")
    polls = cvat_double.requests_to("GET", r"^/api/requests/")
    assert polls and all(r.header("X-Organization") == "team-a" for r in polls)


def test_trigger_gives_up_at_its_deadline_with_the_last_status(cvat_double, monkeypatch):
    import asyncio

    from airflow_cvat.triggers.cvat import CVATRequestTrigger

    key, value = connection_env(
        "cvat_default", conn_type="cvat", host=cvat_double.url, password=cvat_double.DEFAULT_TOKEN
    )
    monkeypatch.setenv(key, value)
    cvat_double.fail_next("GET", r"^/api/requests/", 503, times=2)
    cvat_double.fail_next("GET", r"^/api/requests/", 404, times=1, body={"detail": "Not found."})
    trigger = CVATRequestTrigger({"rq-unknown": "export of job 4 (task 2)"}, poll_interval=0.05, retries=3)

    events = asyncio.run(collect(trigger.run()))

    assert [e.payload["status"] for e in events] == ["error"]
    message = events[0].payload["message"]
    assert "answered 404 for the status of export of job 4 (task 2)" in message
    assert len(cvat_double.requests_to("GET", r"^/api/requests/")) == 3  # two 503s retried, then the 404


async def collect(events):
    return [event async for event in events]


def test_a_jobs_share_of_the_task_annotations_is_what_cvat_answers_for_the_job(cvat):
    """The fingerprint reads a task's annotations once and cuts them by job: the cut must equal
    CVAT's own job annotations, or an unchanged dataset would look changed (and vice versa)."""
    from airflow_cvat.hooks.cvat import CVATHook
    from airflow_cvat.operators.export import _job_share, _strip_volatile

    task_id, jobs = finished_task(cvat, frames=12, segment_size=4)
    cvat.delete_frames(task_id, [4, 5])  # deleted frames keep their annotations, in the job too
    hook = CVATHook()
    whole = _strip_volatile(hook.get_task_annotations(task_id))
    for job in hook.list_raw("jobs", "jobs", task_id=task_id):
        frames = range(job["start_frame"], job["stop_frame"] + 1)
        expected = _strip_volatile(hook.get_job_annotations(job["id"]))
        assert _job_share(whole, frames) == expected
        assert expected["shapes"]  # the comparison is not between two empty lists
    assert sorted(j["id"] for j in hook.list_raw("jobs", "jobs", task_id=task_id)) == jobs
