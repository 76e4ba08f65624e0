"""PublishModelOperator with execution=kubernetes: the TensorFlow half in a pod that reads and
writes object storage itself.

No cluster here: KubernetesPodOperator builds the real pod, then ``execute_sync`` runs the pod's
own command (``python -m airflow_cvat.trainer.convert all ...``, the rendered args) in a
subprocess with only what the pod would have: the storage Secret's ``AWS_*`` (moto's S3) and the
result file KubernetesPodOperator's sidecar reads. So the command line, its URI staging and
upload, the result file and the Airflow side's reading of it are all real; one TensorFlow start
per test (about 20 s each, plus the session's fake SavedModels).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from airflow_cvat.operators.convert import LATEST, MARKER, PublishModelOperator
from airflow_cvat.operators.training import POD_RESULT_FILE
from tests.fixtures.publish import make_run

SECRET = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture
def pod_runs_its_command(kubernetes_conn, s3_server, tmp_path, monkeypatch) -> list:
    """Replace the cluster: run each rendered pod's command as the pod would; keep the pods."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    pods: list = []

    def run_the_pod(self, context):
        pod = self.build_pod_request_obj(context, dry_run=True)
        pods.append(pod)
        container = pod.spec.containers[0]
        result_file = tmp_path / f"return-{len(pods)}.json"
        args = [str(result_file) if a == POD_RESULT_FILE else a for a in container.args]
        env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **SECRET, "AWS_ENDPOINT_URL": s3_server}
        env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
        finished = subprocess.run([sys.executable, *container.command[1:], *args], env=env,
                                  capture_output=True, text=True, timeout=600)  # fmt: skip
        assert finished.returncode == 0, finished.stderr[-3000:]  # non-zero fails the pod's task
        return json.loads(result_file.read_text())

    monkeypatch.setattr(KubernetesPodOperator, "execute_sync", run_the_pod)
    return pods


def upload(folder: Path, bucket: str, prefix: str) -> str:
    import boto3

    s3 = boto3.client("s3")
    for path in folder.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")
    return f"s3://{bucket}/{prefix}"


def keys(bucket: str, prefix: str) -> list[str]:
    import boto3

    listing = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix)
    return [item["Key"] for item in listing.get("Contents", [])]


def publish_in_pod(run_uri: str, bucket: str) -> dict:
    operator = PublishModelOperator(
        task_id="publish",
        run_uri=run_uri,
        root=f"s3://{bucket}/cvat",
        model_name="shapes",
        storage_conn_id="aws_default",
        execution="kubernetes",
        tflite=False,
        preview_images=2,
        pod_arguments={"namespace": "training"},
    )
    ti = SimpleNamespace(dag_id="cvat_retrain", task_id="publish", map_index=-1, try_number=1)
    return operator.execute({"run_id": "manual__1", "ti": ti, "dag": SimpleNamespace(dag_id="cvat_retrain")})


def test_the_pod_converts_from_storage_and_the_worker_publishes(
    fake_runs, s3_bucket, pod_runs_its_command, tmp_path
):
    run = upload(make_run(fake_runs, tmp_path / "run", ap50=0.7), s3_bucket, "cvat/runs/r1")
    outcome = publish_in_pod(run, s3_bucket)

    [pod] = pod_runs_its_command
    container = pod.spec.containers[0]
    assert container.command == ["python", "-m", "airflow_cvat.trainer.convert"]
    assert container.args[:5] == ["all", "--run", run, "--output", f"{run}/converted"]
    assert [s.secret_ref.name for s in container.env_from] == ["cvat-training-storage"]
    assert "testing" not in json.dumps([container.args, [e.to_dict() for e in container.env or []]])
    assert pod.metadata.namespace == "training"
    # The pod wrote its results next to the run; the worker built the version from them.
    assert {f"cvat/runs/r1/converted/{n}" for n in ("history.json", "previews/preview-0.png")} <= set(
        keys(s3_bucket, "cvat/runs/r1/converted/")
    )
    assert outcome["published"] and outcome["latest"]["moved"], outcome
    version = f"cvat/models/shapes/{outcome['version']}/"
    published = set(keys(s3_bucket, version))
    for name in (
        MARKER,
        "saved_model/saved_model.pb",
        "report/training.png",
        "report/preview-1.png",
        "nuclio/main.py",
    ):
        assert version + name in published, name
    assert f"cvat/models/shapes/{LATEST}" in keys(s3_bucket, "cvat/models/shapes/")


def test_a_broken_model_is_an_answer_of_the_pod_not_a_failed_pod(
    fake_runs, s3_bucket, pod_runs_its_command, tmp_path
):
    run = upload(make_run(fake_runs, tmp_path / "run", kind="corrupt"), s3_bucket, "cvat/runs/r2")
    outcome = publish_in_pod(run, s3_bucket)
    assert not outcome["published"] and "broken" in outcome["latest"]["reason"], outcome
    assert not keys(s3_bucket, "cvat/models/")  # nothing published, LATEST untouched
