"""Training operators: the pod KubernetesTrainingOperator renders (no cluster), local execution."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_cvat.machines import BUILTIN_MACHINE_TYPES, MachineTypeError, choose_machine, load_machine_types
from airflow_cvat.operators import training
from airflow_cvat.operators.training import (
    POD_RESULT_FILE,
    LocalTrainingOperator,
    TrainerCommand,
    run_output_uri,
    training_operator,
)
from tests.fixtures.airflow import task_states, xcom

REPO = Path(__file__).resolve().parents[1]
RUN_ID = "manual__2026-01-01T00:00:00+00:00"
SECRET = "conn-secret-Zq81"


def ctx(try_number: int = 1) -> dict:
    """The parts of a task context the pod builder reads, for direct build_pod_request_obj calls."""
    from types import SimpleNamespace

    ti = SimpleNamespace(dag_id="d", task_id="t", map_index=-1, try_number=try_number)
    return {"run_id": RUN_ID, "ti": ti, "dag": SimpleNamespace(dag_id="d")}


@pytest.fixture
def storage_conn(monkeypatch) -> str:
    """An AWS connection whose secret must reach the trainer's env and nothing else."""
    extra = {"endpoint_url": "http://127.0.0.1:9", "region_name": "eu-west-1"}
    monkeypatch.setenv(
        "AIRFLOW_CONN_TRAINING_STORE",
        json.dumps({"conn_type": "aws", "login": "conn-key", "password": SECRET, "extra": extra}),
    )
    return "training_store"


# -- the command builder -----------------------------------------------------------------------


def test_one_command_line_for_both_backends() -> None:
    command = TrainerCommand(
        dataset="s3://b/d/manifest.json",
        output=run_output_uri("s3://b/cvat/", RUN_ID),
        model="ssd-mobilenet-v2-coco",
        base_checkpoint="s3://b/cvat/base_models/ssd-mobilenet-v2-coco",
        arguments="epochs=100;num_clones=2",
        result_file="/tmp/r.json",
    )
    assert command.argv("/venv/bin/python") == [
        "/venv/bin/python", "-m", "airflow_cvat.trainer", "train",
        "--dataset", "s3://b/d/manifest.json",
        "--output", "s3://b/cvat/runs/manual__2026-01-01T00_00_00_00_00",
        "--model", "ssd-mobilenet-v2-coco",
        "--base-checkpoint", "s3://b/cvat/base_models/ssd-mobilenet-v2-coco",
        "--arguments", "epochs=100;num_clones=2",
        "--result-file", "/tmp/r.json",
    ]  # fmt: skip


# -- machine types -----------------------------------------------------------------------------


def test_machine_types_merge_over_builtins_and_refuse_too_many_clones() -> None:
    types = load_machine_types(
        '{"gpu-2": {"node_selector": {"pool": "l4"}}, "big": {"gpus": 8, "cpu": "64", "memory": "1Ti"}}'
    )
    assert types["gpu-2"].gpus == 2 and types["gpu-2"].node_selector == {"pool": "l4"}
    assert types["gpu-2"].tolerations == BUILTIN_MACHINE_TYPES["gpu-2"].tolerations
    assert types["big"].gpus == 8
    assert choose_machine(types, None, 3).name == "gpu-4"
    with pytest.raises(MachineTypeError, match="num_clones=4 needs 4 GPUs but machine type 'gpu-2' has 2"):
        choose_machine(types, "gpu-2", 4)
    with pytest.raises(MachineTypeError, match="unknown machine type 'gpu-3'; known types: big, cpu"):
        choose_machine(types, "gpu-3", 1)
    with pytest.raises(MachineTypeError, match="not valid JSON"):
        load_machine_types("{nope")


# -- Kubernetes: the rendered pod --------------------------------------------------------------

K8S_DAG = """
from airflow.sdk import DAG
from airflow_cvat.operators.training import KubernetesTrainingOperator

with DAG("train_k8s", schedule=None, params={"args": "epochs=100;batch_size=24", "clones": 2}):
    KubernetesTrainingOperator(
        task_id="train",
        namespace="training",
        dataset="s3://bucket/cvat/datasets/team-a/{{ run_id }}/manifest.json",
        model="ssd-mobilenet-v2-coco",
        root="s3://bucket/cvat",
        base_checkpoint="s3://bucket/cvat/base_models/ssd-mobilenet-v2-coco",
        training_arguments="{{ params.args }}",
        num_clones="{{ params.clones }}",
        machine_type="gpu-2",
    )
"""


def test_pod_rendered_in_a_real_task_context(run_dag, kubernetes_conn, monkeypatch) -> None:
    """dag.test() runs the task; only the cluster calls are replaced, after the pod is built."""
    machine_types = {"gpu-2": {"node_selector": {"cloud.google.com/gke-accelerator": "nvidia-l4"}}}
    monkeypatch.setenv("AIRFLOW_VAR_CVAT_MACHINE_TYPES", json.dumps(machine_types))
    pods = []
    cls = training.KubernetesTrainingOperator

    def fake_execute_sync(self, context):
        pods.append(self.build_pod_request_obj(context, dry_run=True))  # no cluster to ask
        return {"status": "ok", "output": self.arguments[self.arguments.index("--output") + 1]}

    monkeypatch.setattr(cls, "execute_sync", fake_execute_sync)
    run = run_dag(K8S_DAG, "train_k8s")
    assert task_states(run) == {"train": "success"}
    [pod] = pods
    run_dir = f"s3://bucket/cvat/runs/{training.safe_run_id(run.run_id)}"
    assert xcom(run, "train") == {"status": "ok", "output": run_dir}

    container = pod.spec.containers[0]
    assert container.name == "base"
    assert container.image == "ghcr.io/airflow-provider-cvat/trainer:0.1.0"
    assert container.command == ["python", "-m", "airflow_cvat.trainer"]
    assert container.args == [
        "train",
        "--dataset", f"s3://bucket/cvat/datasets/team-a/{run.run_id}/manifest.json",
        "--output", run_dir,
        "--model", "ssd-mobilenet-v2-coco",
        "--base-checkpoint", "s3://bucket/cvat/base_models/ssd-mobilenet-v2-coco",
        "--arguments", "epochs=100;batch_size=24;num_clones=2",
        "--result-file", POD_RESULT_FILE,
    ]  # fmt: skip
    assert container.resources.limits == {"memory": "64Gi", "nvidia.com/gpu": "2"}
    assert container.resources.requests == {"cpu": "16", "memory": "64Gi"}
    assert pod.spec.node_selector == {"cloud.google.com/gke-accelerator": "nvidia-l4"}  # from the Variable
    assert [(t.key, t.operator, t.effect) for t in pod.spec.tolerations] == [
        ("nvidia.com/gpu", "Exists", "NoSchedule")
    ]
    [shm] = [v for v in pod.spec.volumes if v.name == "dshm"]
    assert shm.empty_dir.medium == "Memory" and shm.empty_dir.size_limit == "16Gi"
    assert any(m.name == "dshm" and m.mount_path == "/dev/shm" for m in container.volume_mounts)
    assert [e.secret_ref.name for e in container.env_from] == ["cvat-training-storage"]
    env_values = [e.value for e in container.env or []]
    assert not any("AWS" in str(v) or "secret" in str(v).lower() for v in [*container.args, *env_values])
    assert pod.metadata.namespace == "training"
    assert [c.name for c in pod.spec.containers] == ["base", "airflow-xcom-sidecar"]  # do_xcom_push


def test_cpu_machine_asks_for_no_gpu_and_secret_name_is_configurable(kubernetes_conn) -> None:
    op = training.KubernetesTrainingOperator(
        task_id="t",
        namespace="ns",
        dataset="file:///d",
        model="ssd-mobilenet-v2-coco",
        root="file:///root",
        machine_type="cpu",
        storage_secret="minio-creds",
        deferrable=True,
    )
    pod = op.build_pod_request_obj(ctx(), dry_run=True)
    container = pod.spec.containers[0]
    assert op.deferrable is True
    assert "nvidia.com/gpu" not in container.resources.limits
    assert pod.spec.node_selector == {} and not pod.spec.tolerations
    assert container.env_from[0].secret_ref.name == "minio-creds"
    assert "file:///root/runs/manual__2026-01-01T00_00_00_00_00" in container.args


def test_a_resolved_plan_runs_as_given(kubernetes_conn, monkeypatch) -> None:
    """The DAG's config parsed, merged and chose the machine: the operator reads no Variable, loads
    no catalogue and parses nothing; the GPU limit is the plan's num_clones."""
    from airflow_cvat import training_plan

    monkeypatch.setattr(training_plan, "load_catalog", lambda *a: pytest.fail("parsed again"))
    monkeypatch.setattr(training, "_machine_types", lambda: pytest.fail("Variable read again"))
    machine = {**BUILTIN_MACHINE_TYPES["gpu-2"].to_dict(), "node_selector": {"pool": "l4"}}
    plan = {"arguments": "epochs=10;num_clones=2", "num_clones": 2, "training": {}, "machine": machine}
    op = training.KubernetesTrainingOperator(
        task_id="t", namespace="ns", dataset="d", model="ssd-mobilenet-v2-coco", root="s3://b/r", plan=plan
    )
    pod = op.build_pod_request_obj(ctx(), dry_run=True)
    container = pod.spec.containers[0]
    assert container.args[container.args.index("--arguments") + 1] == "epochs=10;num_clones=2"
    assert container.resources.limits["nvidia.com/gpu"] == "2" and pod.spec.node_selector == {"pool": "l4"}


def test_retries_reuse_the_same_output(kubernetes_conn) -> None:
    outputs = set()
    for try_number in (1, 2, 3):
        op = training.KubernetesTrainingOperator(
            task_id="t", namespace="ns", dataset="d", model="ssd-mobilenet-v2-coco", root="s3://b/r"
        )
        args = op.build_pod_request_obj(ctx(try_number), dry_run=True).spec.containers[0].args
        outputs.add(args[args.index("--output") + 1])
    assert len(outputs) == 1


@pytest.mark.parametrize(
    ("arguments", "machine", "message"),
    [
        ("epochs=100;batch_sise=24", "gpu-1", "unknown argument.*batch_sise"),
        ("epochs=ten", "gpu-1", "epochs='ten' is not a number"),
        ("num_clones=4;batch_size=24", "gpu-2", "needs 4 GPUs but machine type 'gpu-2' has 2"),
    ],
)
def test_bad_input_fails_before_any_pod(kubernetes_conn, monkeypatch, arguments, machine, message) -> None:
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from airflow.providers.cncf.kubernetes.utils.pod_manager import PodManager

    def forbidden(*args, **kwargs):
        pytest.fail("a pod or the cluster was touched before the arguments were validated")

    monkeypatch.setattr(PodManager, "create_pod", forbidden)
    monkeypatch.setattr(KubernetesPodOperator, "build_pod_request_obj", forbidden)
    monkeypatch.setattr(KubernetesPodOperator, "execute", forbidden)
    op = training.KubernetesTrainingOperator(
        task_id="t", namespace="ns", dataset="d", model="ssd-mobilenet-v2-coco", root="s3://b/r",
        training_arguments=arguments, machine_type=machine,
    )  # fmt: skip
    started = time.perf_counter()
    with pytest.raises(AirflowFailException, match=message):
        op.execute({"run_id": RUN_ID})
    assert time.perf_counter() - started < 1.0


def test_default_args_reach_the_kubernetes_operator(kubernetes_conn) -> None:
    """Airflow applies default_args only through an __init__ the class itself defines."""
    from airflow.sdk import DAG

    defaults = {"dataset": "d", "model": "ssd-mobilenet-v2-coco", "root": "s3://b/r", "retries": 2}
    with DAG("defaults", schedule=None, default_args={**defaults, "machine_type": "cpu"}):
        k8s_op = training.KubernetesTrainingOperator(task_id="k", namespace="ns")
        local_op = LocalTrainingOperator(task_id="l", storage_conn_id="aws_default")
    assert (k8s_op.dataset, k8s_op.model, k8s_op.root, k8s_op.retries) == tuple(defaults.values())
    assert k8s_op.machine_type == "cpu" and k8s_op.do_xcom_push is True and k8s_op.name == "cvat-train"
    assert (local_op.dataset, local_op.root, local_op.retries) == ("d", "s3://b/r", 2)
    cls = training.KubernetesTrainingOperator
    assert cls is training.KubernetesTrainingOperator  # built once
    assert cls.__module__ == training.__name__ and cls.__qualname__ == "KubernetesTrainingOperator"
    assert {"machine_type", "storage_secret", "dataset", "image"} <= set(cls.template_fields)
    with pytest.raises(TypeError, match="missing keyword argument 'dataset'"):
        cls(task_id="x", model="m", root="s3://b/r")


def test_operator_modules_import_no_kubernetes() -> None:
    """DAG files are parsed often: the Kubernetes provider loads only when a pod operator is used."""
    code = (
        "import sys, airflow_cvat.operators.training, airflow_cvat.operators.preannotate, "
        "airflow_cvat.operators.pod; print('airflow.providers.cncf.kubernetes.operators.pod' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.split()[-1:] == ["False"], out.stdout


def test_operator_modules_import_only_what_their_classes_need() -> None:
    """The DAG file imports every operator module on each parse: what only ``execute`` needs (the
    hook, storage, the archive reader, the request contract, the gate, the plan) loads later."""
    operators = ["backends", "base_model", "config", "convert", "export", "preannotate", "training"]
    execute_only = [
        "airflow_cvat.hooks.cvat",
        "airflow_cvat.storage",
        "airflow_cvat.export_archive",
        "airflow_cvat.manifest",
        "airflow_cvat.mirrors",
        "airflow_cvat.layout",
        "airflow_cvat.preannotation_request",
        "airflow_cvat.training_plan",
        "airflow_cvat.catalog",
        "airflow_cvat.machines",
        "airflow_cvat.operators.quality_gate",
        "airflow_cvat.operators.base_model_pull",
        "airflow_cvat.operators.export_plan",
        "airflow_cvat.operators.preannotate_run",
        "airflow_cvat.operators.trainer_command",
        "airflow.sdk.bases.branch",
        "airflow.providers.cncf.kubernetes.operators.pod",
    ]
    code = (
        "import importlib, json, sys\n"
        f"for name in {operators!r}: importlib.import_module('airflow_cvat.operators.' + name)\n"
        f"print(json.dumps([m for m in {execute_only!r} if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
    # ... and the names callers import from the operator modules still resolve (on first access).
    from airflow_cvat.layout import safe_run_id
    from airflow_cvat.operators import training
    from airflow_cvat.operators.trainer_command import TrainerCommand as Builder

    assert training.TrainerCommand is Builder and training.safe_run_id is safe_run_id


# -- local execution ---------------------------------------------------------------------------


@pytest.fixture
def fake_trainer(tmp_path: Path, monkeypatch) -> Path:
    """Make tests.fake_trainer importable by the subprocess; returns the file it records into."""
    record = tmp_path / "received.json"
    monkeypatch.setenv("FAKE_TRAINER_RECORD", str(record))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    )
    return record


def local(tmp_path: Path, **kwargs) -> LocalTrainingOperator:
    defaults = dict(
        task_id="train",
        dataset=f"file://{tmp_path}/datasets/x/manifest.json",
        model="ssd-mobilenet-v2-coco",
        root=f"file://{tmp_path}/root",
        training_arguments="epochs=3;batch_size=4",
        trainer_module="tests.fake_trainer",
    )
    return LocalTrainingOperator(**{**defaults, **kwargs})


def test_local_run_streams_output_and_returns_the_json(tmp_path, fake_trainer, storage_conn, capfd) -> None:
    op = local(tmp_path, storage_conn_id=storage_conn, base_checkpoint="file:///b", num_clones=2)
    result = op.execute({"run_id": RUN_ID})

    output = f"file://{tmp_path}/root/runs/manual__2026-01-01T00_00_00_00_00"
    assert result == {"status": "ok", "output": output, "steps": 3, "metrics": {"AP50": 0.5}}
    received = json.loads(fake_trainer.read_text())
    argv = received["argv"]
    dataset = f"file://{tmp_path}/datasets/x/manifest.json"
    assert argv[:7] == ["train", "--dataset", dataset, "--output", output, "--model", "ssd-mobilenet-v2-coco"]
    assert argv[argv.index("--arguments") + 1] == "epochs=3;batch_size=4;num_clones=2"
    assert argv[argv.index("--base-checkpoint") + 1] == "file:///b"
    env = received["env"]
    assert env["AWS_ACCESS_KEY_ID"] == "conn-key" and env["AWS_SECRET_ACCESS_KEY"] == SECRET
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9" and env["AWS_DEFAULT_REGION"] == "eu-west-1"
    assert not any(k.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_")) for k in env)
    assert SECRET not in " ".join(argv)
    logged = capfd.readouterr().out
    assert "step 2/3 loss=0.500" in logged  # streamed into the task log, line by line
    assert "Running the trainer:" in logged and SECRET not in logged


def test_local_trainer_error_fails_with_its_message(tmp_path, fake_trainer, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_TRAINER_MODE", "error")
    with pytest.raises(AirflowFailException) as info:  # bad input (exit 2): no retry can help
        local(tmp_path).execute({"run_id": RUN_ID})
    assert str(info.value) == "training failed: dataset has no label 'car' in its manifest"


def test_local_trainer_crash_reports_exit_code_and_last_lines(tmp_path, fake_trainer, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_TRAINER_MODE", "crash")
    with pytest.raises(
        AirflowException, match=r"exited with code 1(.|\n)*RuntimeError: something unexpected"
    ):
        local(tmp_path).execute({"run_id": RUN_ID})


def test_local_bad_arguments_start_no_process(tmp_path, monkeypatch) -> None:
    def forbidden(*args, **kwargs):
        pytest.fail("the trainer was started before the arguments were validated")

    monkeypatch.setattr(subprocess, "Popen", forbidden)
    with pytest.raises(AirflowFailException, match="num_clones=2 conflicts with num_clones=4"):
        local(tmp_path, training_arguments="num_clones=4", num_clones=2).execute({"run_id": RUN_ID})


def test_local_training_in_a_dag_run(run_dag, tmp_path, fake_trainer) -> None:
    op_kwargs = dict(
        task_id="train",
        dataset="file:///data/manifest.json",
        model="{{ params.model }}",
        root=f"file://{tmp_path}/root",
        training_arguments="{{ params.args }}",
        trainer_module="tests.fake_trainer",
        machine_type="gpu-2",  # a Kubernetes-only argument: dropped for local execution
    )
    run = run_dag(
        f"""
        from airflow.sdk import DAG
        from airflow_cvat.operators.training import training_operator

        params = {{"model": "ssd-mobilenet-v2-coco", "args": "epochs=3"}}
        with DAG("train_local", schedule=None, params=params):
            training_operator("local", **{op_kwargs!r})
        """,
        "train_local",
    )
    assert task_states(run) == {"train": "success"}
    result = xcom(run, "train")
    assert result["status"] == "ok"
    assert result["output"] == f"file://{tmp_path}/root/runs/{training.safe_run_id(run.run_id)}"
    assert "--arguments" in json.loads(fake_trainer.read_text())["argv"]


def test_training_operator_picks_the_backend(kubernetes_conn) -> None:
    common = dict(task_id="t", dataset="d", model="ssd-mobilenet-v2-coco", root="s3://b/r", retries=3)
    local_op = training_operator("local", storage_conn_id="aws_default", image="x", **common)
    k8s_op = training_operator("kubernetes", storage_conn_id="aws_default", image="img:1", **common)
    assert isinstance(local_op, LocalTrainingOperator) and local_op.retries == 3
    assert isinstance(k8s_op, training.KubernetesTrainingOperator) and k8s_op.image == "img:1"
    assert k8s_op.do_xcom_push is True and k8s_op.retries == 3
    with pytest.raises(ValueError, match="execution must be"):
        training_operator("docker", **common)
