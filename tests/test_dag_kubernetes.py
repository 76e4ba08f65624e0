"""cvat_retrain with execution=kubernetes on an Airflow worker that has no TensorFlow.

The DAG runs with Airflow itself (dag.test on the SQLite metadata DB) in a subprocess whose
``sys.meta_path`` refuses ``tensorflow``, ``tf_keras`` and the Model Garden (``official``), so an
Airflow-side import of any of them fails the task that makes it (and is recorded); a PYTHONPATH
shim makes ``import tensorflow`` fail in any subprocess a task would start, too. There is no cluster: the pod
operators run for real up to the pod (KubernetesPodOperator builds it with the rendered fields),
then ``execute_sync`` is replaced by a function that keeps the rendered pod and does what the
pod's command would do to storage (:data:`RUNNER`'s ``POD_COMMANDS``), so every task after a pod
runs on the pod's answer. CVAT is the double, storage file://, SMTP aiosmtpd; about 40 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.fixtures.airflow import connection_env

DAG_FILE = Path(__file__).resolve().parents[1] / "dags" / "cvat_retrain.py"
MODEL = "ssd-mobilenet-v2-coco"

RUNNER = textwrap.dedent(
    '''
    import importlib.abc, json, sys
    from pathlib import Path

    BLOCKED = ("tensorflow", "tf_keras", "official")
    attempts = []


    class NoTensorFlow(importlib.abc.MetaPathFinder):
        """This worker has no TensorFlow: every import of it fails, and is recorded."""

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                attempts.append(name)
                raise ModuleNotFoundError(f"No module named {name!r} (this worker has no TensorFlow)")
            return None


    sys.meta_path.insert(0, NoTensorFlow())
    try:
        import tensorflow  # noqa: F401
        raise SystemExit("the blocker does not block")
    except ModuleNotFoundError:
        attempts.clear()

    from airflow.dag_processing.dagbag import DagBag
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import ApiClient

    dag_file, conf, out = sys.argv[1], json.loads(sys.argv[2]), Path(sys.argv[3])
    pods = {}


    def option(args, name):
        return args[args.index(name) + 1]


    def local(uri):
        return Path(uri.removeprefix("file://"))


    def train(args):
        """What `python -m airflow_cvat.trainer train` leaves in --output: a finished run."""
        run = local(option(args, "--output"))
        (run / "saved_model" / "variables").mkdir(parents=True)
        (run / "saved_model" / "saved_model.pb").write_bytes(b"a SavedModel the pod wrote")
        (run / "saved_model" / "variables" / "variables.index").write_bytes(b"index")
        labels = [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}, {"id": 3, "name": "triangle"}]
        (run / "label_map.json").write_text(json.dumps({"labels": labels}))
        (run / "metrics.json").write_text(json.dumps({"AP": 0.4, "AP50": 0.6, "AP75": 0.3, "per_class": {}}))
        result = {"status": "ok", "model": option(args, "--model"), "output": option(args, "--output"),
                  "metrics": {"AP50": 0.6}}
        (run / "result.json").write_text(json.dumps(result))
        return result


    def convert(args):
        """What `python -m airflow_cvat.trainer.convert all` leaves in --output, and its result."""
        output = local(option(args, "--output"))
        output.mkdir(parents=True)
        history = {"train": {"total_loss": [[10, 2.0], [20, 1.0]]}, "eval": {"coco/AP50": [[20, 0.6]]}}
        (output / "history.json").write_text(json.dumps(history))
        return {"status": "ok", "check": {"masks": False, "max_detections": 100},
                "history": {"file": "history.json"}, "previews": {"images": []},
                "tflite": {"status": "skipped", "reason": "tflite=False"}}


    def preannotate(args):
        return {"status": "ok", "task_ids": [int(option(args, "--task-id"))], "frames": 4,
                "shapes": 0, "per_label": {}, "seconds_inference": 0.1, "seconds_upload": 0.1}


    POD_COMMANDS = {"airflow_cvat.trainer": train, "airflow_cvat.trainer.convert": convert,
                    "airflow_cvat.trainer.preannotate": preannotate}


    def render_instead_of_running(self, context):
        pod = self.build_pod_request_obj(context, dry_run=True)  # no cluster to ask
        pods[self.task_id] = ApiClient().sanitize_for_serialization(pod)
        container = pod.spec.containers[0]
        return POD_COMMANDS[container.command[-1]](list(container.args))


    KubernetesPodOperator.execute_sync = render_instead_of_running
    bag = DagBag(dag_file)
    assert not bag.import_errors, bag.import_errors
    run = bag.get_dag("cvat_retrain").test(run_conf=conf)
    xcoms = {ti.task_id: ti.xcom_pull(task_ids=ti.task_id) for ti in run.get_task_instances()
             if ti.task_id in ("publish", "pre_annotate")}
    (out / "result.json").write_text(json.dumps({
        "states": {ti.task_id: str(ti.state) for ti in run.get_task_instances()},
        "pods": pods, "xcom": xcoms, "blocked_imports": attempts,
        "loaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED),
    }, default=str))
    '''
)


pytestmark = pytest.mark.slow  # runs the whole DAG: after the light tests


def no_tensorflow_path(folder: Path) -> str:
    """A PYTHONPATH whose ``tensorflow`` and ``tf_keras`` raise on import: it reaches every
    subprocess the worker starts too (the meta_path blocker covers only the DAG's process)."""
    for name in ("tensorflow", "tf_keras"):
        (folder / name).mkdir(parents=True)
        (folder / name / "__init__.py").write_text(f"raise ModuleNotFoundError('no {name} on this worker')\n")
    return os.pathsep.join([str(folder), str(Path(__file__).resolve().parents[1])])


def fake_checkpoint(folder: Path) -> Path:
    """A checkpoint folder in the published form (names only: nothing here loads it)."""
    folder.mkdir(parents=True)
    (folder / "ckpt-1.index").write_bytes(b"index")
    (folder / "ckpt-1.data-00000-of-00001").write_bytes(b"weights")
    return folder


def test_kubernetes_run_renders_every_pod_and_the_worker_never_imports_tensorflow(
    cvat_double, smtp_server, kubernetes_conn, airflow_db, tmp_path, monkeypatch
):
    from airflow.configuration import conf as airflow_conf

    task_id = cvat_double.add_task("shapes", frames=8, segment_size=8, seed=3)
    for job_id in cvat_double.job_ids(task_id):
        cvat_double.set_job(job_id, state="completed", stage="acceptance")
    unstarted = cvat_double.add_task("shapes-todo", frames=4, segment_size=4, seed=5, annotated=False)
    monkeypatch.setenv(*connection_env("cvat_default", conn_type="cvat", host=cvat_double.url,
                                       password=cvat_double.DEFAULT_TOKEN))  # fmt: skip
    catalog = tmp_path / "catalog.json"
    weights = fake_checkpoint(tmp_path / "weights")
    entry = {
        "name": MODEL,
        "family": "retinanet",
        "backbone": "mobilenet_v2",
        "checkpoint": f"{weights.as_uri()}/",
    }
    catalog.write_text(json.dumps({"models": [entry]}))
    root = tmp_path / "root"
    monkeypatch.setenv(
        "AIRFLOW_VAR_CVAT_RETRAIN", json.dumps({"root": root.as_uri(), "catalog_file": str(catalog)})
    )
    monkeypatch.setenv("CVAT_RETRAIN_KUBERNETES", "true")
    monkeypatch.setenv("CVAT_RETRAIN_SCHEDULE", "none")
    monkeypatch.setenv("CVAT_QUALITY_FLOOR", "0")
    monkeypatch.delenv("CVAT_STORAGE_CONN_ID", raising=False)
    conf = {"task_ids": f"{task_id}", "execution": "kubernetes", "emails": ["team@example.com"],
            "pre_annotate": True, "pre_annotate_task_ids": f"{unstarted}"}  # fmt: skip

    dags = Path(airflow_conf.get("core", "dags_folder"))
    dags.mkdir(parents=True, exist_ok=True)
    dag_file = dags / "cvat_retrain.py"
    dag_file.write_text(DAG_FILE.read_text())
    try:
        finished = subprocess.run(
            [sys.executable, "-c", RUNNER, str(dag_file), json.dumps(conf), str(tmp_path)],
            capture_output=True, text=True, timeout=600,
            env={**os.environ, "PYTHONPATH": no_tensorflow_path(tmp_path / "no-tensorflow")},
        )  # fmt: skip
    finally:
        dag_file.unlink(missing_ok=True)
    assert finished.returncode == 0, finished.stderr[-4000:]
    result = json.loads((tmp_path / "result.json").read_text())
    states, pods = result["states"], result["pods"]

    assert result["loaded"] == [] and result["blocked_imports"] == [], result
    assert states == {
        **dict.fromkeys(
            ["config", "export", "pull_base_model", "where_to_train", "train_kubernetes"], "success"
        ),
        **dict.fromkeys(["publish", "pre_annotate", "email_report", "record_dataset"], "success"),
        "train_local": "skipped",
    }, finished.stderr[-4000:]
    assert sorted(pods) == ["pre_annotate", "publish", "train_kubernetes"]
    containers = {name: pod["spec"]["containers"][0] for name, pod in pods.items()}
    assert containers["train_kubernetes"]["command"] == ["python", "-m", "airflow_cvat.trainer"]
    assert containers["publish"]["command"] == ["python", "-m", "airflow_cvat.trainer.convert"]
    assert containers["pre_annotate"]["command"] == ["python", "-m", "airflow_cvat.trainer.preannotate"]

    # publish's pod reads the run the training pod wrote and writes next to it, itself.
    run_uri = next(a for a in containers["train_kubernetes"]["args"] if "/runs/" in a)
    args = containers["publish"]["args"]
    assert args[:5] == ["all", "--run", run_uri, "--output", f"{run_uri}/converted"]
    assert args[args.index("--result-file") + 1] == "/airflow/xcom/return.json"
    assert containers["publish"]["resources"]["requests"]["cpu"] == "4"  # the cpu machine type
    for name, container in containers.items():
        secrets = {source["secretRef"]["name"] for source in container.get("envFrom", [])}
        assert "cvat-training-storage" in secrets, name
    assert "cvat-credentials" in {s["secretRef"]["name"] for s in containers["pre_annotate"]["envFrom"]}
    assert cvat_double.DEFAULT_TOKEN not in json.dumps(pods)  # credentials only through Secrets

    # The Airflow side published what the pods made, and pre-annotation used that version.
    outcome = result["xcom"]["publish"]
    version = root / "models" / MODEL / outcome["version"]
    assert outcome["published"] and outcome["latest"]["moved"], outcome
    assert json.loads((root / "models" / MODEL / "LATEST").read_text())["version"] == outcome["version"]
    for name in (
        "PUBLISHED.json",
        "saved_model/saved_model.pb",
        "nuclio/function.yaml",
        "report/training.png",
    ):
        assert (version / name).is_file(), name
    pre_args = containers["pre_annotate"]["args"]
    assert pre_args[pre_args.index("--model-uri") + 1] == outcome["uri"]
    assert result["xcom"]["pre_annotate"]["task_ids"] == [unstarted]
    assert "team@example.com" in smtp_server.wait(1)[-1]["To"]


def test_the_backend_is_chosen_when_the_task_runs():
    """RunBackendOperator builds the operator of the rendered ``execution`` at execute time; the
    other backend's arguments are dropped; an unknown backend fails without a retry."""
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_cvat.operators.backends import RunBackendOperator
    from airflow_cvat.operators.preannotate import preannotate_operator

    built = []

    def recording(execution, **kwargs):
        operator = preannotate_operator(execution, **kwargs)
        operator.execute = lambda context: type(operator).__name__  # no CVAT, no cluster here
        built.append(operator)
        return operator

    arguments = {"task_ids": "3", "model_uri": "s3://bucket/cvat/models/m", "storage_conn_id": "aws_default",
                 "machine_type": "cpu"}  # fmt: skip
    for execution, name in (
        ("kubernetes", "KubernetesPreAnnotateOperator"),
        ("local", "PreAnnotateOperator"),
    ):
        chooser = RunBackendOperator(task_id="pre_annotate", execution=execution, factory=recording,
                                     arguments=arguments)  # fmt: skip
        assert chooser.execute({}) == name
    pod, local = built
    assert pod.task_id == local.task_id == "pre_annotate"
    assert not hasattr(pod, "storage_conn_id") and local.storage_conn_id == "aws_default"
    assert pod.machine_type == "cpu" and not hasattr(local, "machine_type")
    wrong = RunBackendOperator(
        task_id="pre_annotate", execution="docker", factory=recording, arguments=arguments
    )
    with pytest.raises(AirflowFailException, match="'local' or 'kubernetes'"):
        wrong.execute({})
