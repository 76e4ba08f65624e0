"""Training operators: one trainer command line, two thin ways to run it (Kubernetes pod, local).

Why one builder: the trainer (``python -m airflow_cvat.trainer train ...``) is the only
implementation of training. :class:`TrainerCommand` builds its arguments once; the Kubernetes
operator puts them in a pod, the local operator in a subprocess (the astronomer-cosmos idea of
one command builder under thin execution adapters). Both validate the argument string with
:func:`airflow_cvat.arguments.parse_arguments` first, so a typo fails in milliseconds, before a
pod is created or a process started.

Both derive the run's output folder from the artifact root and the run id
(:func:`run_output_uri`), never from the try number: the trainer resumes from the checkpoints
it finds there, so a retry continues where the failed try stopped.

Import cost: ``KubernetesPodOperator`` pulls in the Kubernetes client (about 1-2 s), and DAG
files are parsed many times a minute. So :class:`KubernetesTrainingOperator` is created on first
access (a module ``__getattr__``); a DAG that only trains locally never pays for it.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_cvat.arguments import ArgumentError, TrainingArguments, parse_arguments, split_arguments
from airflow_cvat.catalog import CatalogError, load_catalog
from airflow_cvat.machines import (
    GPU_RESOURCE,
    MACHINE_TYPES_VARIABLE,
    MachineType,
    MachineTypeError,
    choose_machine,
    load_machine_types,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

TRAINER_MODULE = "airflow_cvat.trainer"
DEFAULT_IMAGE = "ghcr.io/airflow-provider-cvat/trainer:0.1.0"
DEFAULT_STORAGE_SECRET = "cvat-training-storage"
POD_RESULT_FILE = "/airflow/xcom/return.json"
"""Where KubernetesPodOperator's XCom sidecar reads the task's return value."""
TRAINER_ERROR_EXIT = 2
"""The trainer's exit code for a reported error (its last stdout line is the JSON error)."""

TRAINING_TEMPLATE_FIELDS: tuple[str, ...] = (
    "dataset",
    "model",
    "root",
    "output_uri",
    "base_checkpoint",
    "training_arguments",
    "num_clones",
    "catalog_file",
)


# -- the one command builder -------------------------------------------------------------------


@dataclass(frozen=True)
class TrainerCommand:
    """The trainer's ``train`` command line, without the interpreter (each backend adds its own)."""

    dataset: str
    output: str
    model: str
    base_checkpoint: str | None = None
    arguments: str | None = None
    catalog: str | None = None
    result_file: str | None = None

    def args(self) -> list[str]:
        """Arguments after ``python -m airflow_cvat.trainer``; never credentials."""
        argv = ["train", "--dataset", self.dataset, "--output", self.output, "--model", self.model]
        for flag, value in (
            ("--base-checkpoint", self.base_checkpoint),
            ("--arguments", self.arguments),
            ("--catalog", self.catalog),
            ("--result-file", self.result_file),
        ):
            if value:
                argv += [flag, value]
        return argv

    def argv(self, python: str, module: str = TRAINER_MODULE) -> list[str]:
        return [python, "-m", module, *self.args()]


def safe_run_id(run_id: str) -> str:
    """A run id usable as one path segment anywhere (``:`` and ``+`` are awkward in URLs and S3)."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", run_id).strip("_") or "run"


def run_output_uri(root: str, run_id: str) -> str:
    """``{root}/runs/{run_id}``: same for every try of a run, so a retry resumes from checkpoints."""
    return f"{root.rstrip('/')}/runs/{safe_run_id(run_id)}"


def merge_num_clones(arguments: str | None, num_clones: Any) -> str | None:
    """Add a separately given num_clones (the DAG form has a field for it) to the argument string.

    Why refuse a conflict: two different GPU counts for one run is a mistake, not a preference.
    """
    if num_clones in (None, "", "None"):
        return arguments
    try:
        clones = int(num_clones)
    except (TypeError, ValueError):
        raise ArgumentError(f"num_clones must be a whole number, got {num_clones!r}") from None
    given = split_arguments(arguments).get("num_clones")
    if given is not None:
        if str(given) != str(clones):
            raise ArgumentError(f"num_clones={clones} conflicts with num_clones={given} in the arguments")
        return arguments
    return ";".join(p for p in ((arguments or "").strip().rstrip(";"), f"num_clones={clones}") if p)


class TrainingParams:
    """Fields and validation shared by both training operators (a mixin: no __init__ of its own)."""

    dataset: str
    model: str
    root: str | None
    output_uri: str | None
    base_checkpoint: str | None
    training_arguments: str | None
    num_clones: Any
    catalog_file: str | None
    trainer_module: str

    def _set_training_params(
        self,
        *,
        dataset: str,
        model: str,
        root: str | None,
        output_uri: str | None,
        base_checkpoint: str | None,
        training_arguments: str | None,
        num_clones: Any,
        catalog_file: str | None,
        trainer_module: str,
    ) -> None:
        if not root and not output_uri:
            raise ValueError(
                "give root (the artifact root; output goes to {root}/runs/{run_id}) or output_uri"
            )
        self.dataset = dataset
        self.model = model
        self.root = root
        self.output_uri = output_uri
        self.base_checkpoint = base_checkpoint
        self.training_arguments = training_arguments
        self.num_clones = num_clones
        self.catalog_file = catalog_file
        self.trainer_module = trainer_module

    def validate_arguments(self) -> tuple[str | None, TrainingArguments]:
        """(argument string as the trainer gets it, parsed arguments); bad input fails the task now.

        AirflowFailException: retrying a typo cannot help. The image count is unknown here, so
        the trainer parses again with it (only the default number of steps can change).
        """
        try:
            text = merge_num_clones(self.training_arguments, self.num_clones)
            parsed = parse_arguments(self.model, text, catalog=load_catalog(self.catalog_file))
        except (ArgumentError, CatalogError) as error:
            raise AirflowFailException(f"invalid training arguments: {error}") from None
        return text, parsed

    def trainer_command(
        self, context: Context | None, text: str | None, result_file: str | None
    ) -> TrainerCommand:
        run_id = (context or {}).get("run_id") or "dry_run"
        return TrainerCommand(
            dataset=self.dataset,
            output=self.output_uri or run_output_uri(self.root or "", str(run_id)),
            model=self.model,
            base_checkpoint=self.base_checkpoint or None,
            arguments=text,
            catalog=self.catalog_file,
            result_file=result_file,
        )


# -- local execution ---------------------------------------------------------------------------


class LocalTrainingOperator(TrainingParams, BaseOperator):
    """Run the trainer as a subprocess of the worker; its output goes line by line to the task log.

    :param dataset: the dataset URI the trainer reads (the export's manifest or folder).
    :param model: catalogue name.
    :param root: artifact root; the output is ``{root}/runs/{run_id}`` unless ``output_uri`` is given.
    :param output_uri: explicit output URI (keep it the same across retries: the trainer resumes there).
    :param base_checkpoint: URI of the base checkpoint (BaseModelPullOperator's XCom).
    :param training_arguments: ``"epochs=100;batch_size=24;num_clones=2"``.
    :param num_clones: replicas, when not in ``training_arguments`` (the DAG form's field).
    :param catalog_file: a catalogue file readable on the worker.
    :param storage_conn_id: an AWS connection; its credentials, region and endpoint reach the
        trainer as AWS_* environment variables (never argv, never the log). None: the worker's own.
    :param trainer_module: module run with ``python -m``; tests point it at a fake trainer.
    :param python: interpreter (default: the worker's, ``sys.executable``).
    :param env: extra, non-secret environment variables for the trainer.
    :return: the trainer's JSON result (XCom).
    """

    template_fields: Sequence[str] = (*TRAINING_TEMPLATE_FIELDS, "env")
    ui_color = "#e6fbe9"

    def __init__(
        self,
        *,
        dataset: str,
        model: str,
        root: str | None = None,
        output_uri: str | None = None,
        base_checkpoint: str | None = None,
        training_arguments: str | None = None,
        num_clones: Any = None,
        catalog_file: str | None = None,
        storage_conn_id: str | None = None,
        trainer_module: str = TRAINER_MODULE,
        python: str | None = None,
        env: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._set_training_params(
            dataset=dataset,
            model=model,
            root=root,
            output_uri=output_uri,
            base_checkpoint=base_checkpoint,
            training_arguments=training_arguments,
            num_clones=num_clones,
            catalog_file=catalog_file,
            trainer_module=trainer_module,
        )
        self.storage_conn_id = storage_conn_id
        self.python = python
        self.env = env or {}
        self._process: subprocess.Popen | None = None

    def execute(self, context: Context) -> dict[str, Any]:
        text, _ = self.validate_arguments()
        with tempfile.TemporaryDirectory(prefix="cvat-train-") as scratch:
            result_file = os.path.join(scratch, "result.json")
            command = self.trainer_command(context, text, result_file)
            argv = command.argv(self.python or sys.executable, self.trainer_module)
            self.log.info("Running the trainer: %s", shlex.join(argv))
            code, tail = self._run(argv, self._environment())
            result = _read_result(result_file, tail)
        return self._outcome(code, result, tail)

    def _environment(self) -> dict[str, str]:
        return worker_environment(self.env, self.storage_conn_id)

    def _run(self, argv: list[str], env: dict[str, str]) -> tuple[int, list[str]]:
        """Stream the trainer's output into the log; (exit code, last lines)."""

        def started(process: subprocess.Popen) -> None:
            self._process = process

        return run_streamed(argv, env, self.log, started)

    def _outcome(self, code: int, result: dict[str, Any] | None, tail: list[str]) -> dict[str, Any]:
        if code == 0 and result is not None and result.get("status") == "ok":
            return result
        if result is not None and result.get("status") == "error":
            raise AirflowException(f"training failed: {result.get('error') or result}")
        last = "\n".join(tail[-15:])
        if code < 0:
            raise AirflowException(f"the trainer was killed by signal {-code}; last output:\n{last}")
        raise AirflowException(
            f"the trainer exited with code {code} and no JSON result; last output:\n{last}"
        )

    def on_kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGTERM)


def worker_environment(extra: dict[str, Any] | None, storage_conn_id: str | None) -> dict[str, str]:
    """The worker's environment without Airflow's secrets, plus ``extra`` and the storage credentials."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_"))}
    env.update({str(k): str(v) for k, v in (extra or {}).items()})
    env["PYTHONUNBUFFERED"] = "1"  # lines reach the task log as they are printed
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter is not news
    env.update(aws_environment(storage_conn_id))
    return env


def run_streamed(
    argv: list[str], env: dict[str, str], log: Any, started: Any = None
) -> tuple[int, list[str]]:
    """Run a command with its output streamed line by line into ``log``; (exit code, last lines).

    ``started(process)`` is called once the process exists (an operator keeps it for on_kill). The
    process gets its own session, so killing its group stops it and anything it started.
    """
    tail: deque[str] = deque(maxlen=40)
    process = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        text=True,
        bufsize=1,
        start_new_session=True,
    )
    if started is not None:
        started(process)
    assert process.stdout is not None
    for line in process.stdout:
        line = line.rstrip("\n")
        log.info("%s", line)
        if line.strip():
            tail.append(line)
    return process.wait(), list(tail)


def aws_environment(conn_id: str | None) -> dict[str, str]:
    """AWS_* variables for the trainer from an Airflow AWS connection (secrets masked in logs)."""
    if not conn_id:
        return {}
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
    from airflow.sdk.log import mask_secret

    hook = AwsBaseHook(aws_conn_id=conn_id, client_type="s3")
    credentials = hook.get_credentials()
    env = {
        "AWS_ACCESS_KEY_ID": credentials.access_key,
        "AWS_SECRET_ACCESS_KEY": credentials.secret_key,
        "AWS_SESSION_TOKEN": credentials.token,
        "AWS_DEFAULT_REGION": hook.conn_region_name,
        "AWS_ENDPOINT_URL": hook.conn_config.endpoint_url,
    }
    for key in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        if env[key]:
            mask_secret(env[key])
    return {k: str(v) for k, v in env.items() if v}


def _read_result(result_file: str, tail: list[str]) -> dict[str, Any] | None:
    """The trainer's JSON result: the result file, else the last stdout line that is JSON."""
    candidates: list[str] = []
    if os.path.exists(result_file):
        with open(result_file, encoding="utf-8") as handle:
            candidates.append(handle.read())
    candidates += reversed(tail[-3:])
    for text in candidates:
        try:
            value = json.loads(text)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


# -- Kubernetes --------------------------------------------------------------------------------


class KubernetesTrainingMixin(TrainingParams):
    """Train in a pod of the training image, on a named machine type; see KubernetesTrainingOperator.

    :param dataset, model, root, output_uri, base_checkpoint, training_arguments, num_clones: as for
        LocalTrainingOperator. ``catalog_file`` is passed to the trainer as ``--catalog``, so it
        must be readable inside the pod (a path in the image or a URI the trainer reads).
    :param image: the training image.
    :param machine_type: a name from the built-in types and the ``cvat_machine_types`` Variable
        (see :mod:`airflow_cvat.machines`); None picks the smallest GPU type with num_clones GPUs.
    :param storage_secret: Kubernetes Secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and
        AWS_ENDPOINT_URL, AWS_DEFAULT_REGION if needed), mounted with envFrom; credentials never
        appear in the pod's arguments or env values. None: rely on the pod's own identity (IRSA,
        workload identity).
    :param trainer_module: module the pod runs with ``python -m``.

    Everything else is KubernetesPodOperator's (namespace, deferrable, kubernetes_conn_id, ...).
    ``do_xcom_push`` is always on: the trainer writes its JSON result to /airflow/xcom/return.json.
    """

    def __init__(
        self,
        *,
        dataset: str,
        model: str,
        root: str | None = None,
        output_uri: str | None = None,
        base_checkpoint: str | None = None,
        training_arguments: str | None = None,
        num_clones: Any = None,
        catalog_file: str | None = None,
        image: str = DEFAULT_IMAGE,
        machine_type: str | None = None,
        storage_secret: str | None = DEFAULT_STORAGE_SECRET,
        trainer_module: str = TRAINER_MODULE,
        **kwargs: Any,
    ) -> None:
        kwargs["do_xcom_push"] = True
        kwargs.setdefault("name", "cvat-train")
        super().__init__(image=image, **kwargs)  # type: ignore[call-arg]
        self._set_training_params(
            dataset=dataset,
            model=model,
            root=root,
            output_uri=output_uri,
            base_checkpoint=base_checkpoint,
            training_arguments=training_arguments,
            num_clones=num_clones,
            catalog_file=catalog_file,
            trainer_module=trainer_module,
        )
        self.machine_type = machine_type
        self.storage_secret = storage_secret
        self._training_pod_ready = False

    def execute(self, context: Context) -> Any:
        self.prepare_training_pod(context)  # validates before the hook or any pod is touched
        return super().execute(context)  # type: ignore[misc]

    def build_pod_request_obj(self, context: Context | None = None, *, dry_run: bool = False) -> Any:
        self.prepare_training_pod(context)
        return super().build_pod_request_obj(context, dry_run=dry_run)  # type: ignore[misc]

    def prepare_training_pod(self, context: Context | None) -> None:
        """Set command, scheduling, resources, /dev/shm and the credentials Secret (once)."""
        if self._training_pod_ready:
            return
        from kubernetes.client import models as k8s

        text, parsed = self.validate_arguments()
        machine = self.resolve_machine(parsed.num_clones)
        command = self.trainer_command(context, text, POD_RESULT_FILE)
        self.log.info("Training on machine type %s: %s", machine.name, json.dumps(machine.to_dict()))
        self.cmds = ["python", "-m", self.trainer_module]
        self.arguments = command.args()
        self.node_selector = {**machine.node_selector, **(self.node_selector or {})}
        self.tolerations = [*(k8s.V1Toleration(**t) for t in machine.tolerations), *(self.tolerations or [])]
        self.container_resources = pod_resources(machine, parsed.num_clones)
        self.volumes = [*self.volumes, shm_volume(machine)]
        self.volume_mounts = [*self.volume_mounts, k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm")]
        if self.storage_secret:
            secret = k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=self.storage_secret))
            self.env_from = [*(self.env_from or []), secret]
        self._training_pod_ready = True

    def resolve_machine(self, num_clones: int) -> MachineType:
        """The machine type, with the Variable read now (task run time), not at DAG parse time."""
        from airflow.sdk import Variable

        try:
            types = load_machine_types(Variable.get(MACHINE_TYPES_VARIABLE, default=None))
            return choose_machine(types, self.machine_type or None, num_clones)
        except MachineTypeError as error:
            raise AirflowFailException(str(error)) from None


def pod_resources(machine: MachineType, num_clones: int) -> Any:
    """Requests from the machine type; memory limited; one GPU per clone (none on CPU machines)."""
    from kubernetes.client import models as k8s

    limits = {"memory": machine.memory}
    if machine.gpus:
        limits[GPU_RESOURCE] = str(num_clones)
    return k8s.V1ResourceRequirements(requests={"cpu": machine.cpu, "memory": machine.memory}, limits=limits)


def shm_volume(machine: MachineType) -> Any:
    """An in-memory emptyDir for /dev/shm (tf.data workers and NCCL need more than 64 MiB)."""
    from kubernetes.client import models as k8s

    return k8s.V1Volume(
        name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory", size_limit=machine.shm_size)
    )


def _kubernetes_operator_class() -> type:
    """Create KubernetesTrainingOperator (imports the Kubernetes provider: done on first use)."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    class KubernetesTrainingOperator(KubernetesTrainingMixin, KubernetesPodOperator):
        __doc__ = KubernetesTrainingMixin.__doc__

        # Defined here, not inherited: Airflow applies default_args only to an __init__ a class defines.
        def __init__(self, **kwargs: Any) -> None:
            KubernetesTrainingMixin.__init__(self, **kwargs)

        __init__.__signature__ = inspect.signature(KubernetesTrainingMixin.__init__)  # type: ignore[attr-defined]
        template_fields: Sequence[str] = tuple(
            dict.fromkeys(
                (
                    *KubernetesPodOperator.template_fields,
                    *TRAINING_TEMPLATE_FIELDS,
                    "machine_type",
                    "storage_secret",
                )
            )
        )
        ui_color = "#e6f1fb"

    KubernetesTrainingOperator.__module__ = __name__
    KubernetesTrainingOperator.__qualname__ = "KubernetesTrainingOperator"
    return KubernetesTrainingOperator


def __getattr__(name: str) -> Any:
    if name == "KubernetesTrainingOperator":
        if name not in globals():
            globals()[name] = _kubernetes_operator_class()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- choosing one ------------------------------------------------------------------------------


def training_operator(execution: Literal["local", "kubernetes"] = "local", **kwargs: Any) -> BaseOperator:
    """The training task for ``execution``; the same keyword arguments work for both.

    Backend-only arguments (``image``, ``machine_type``, ``namespace``, ``deferrable``... for
    Kubernetes; ``storage_conn_id``, ``python``, ``env`` for local) are dropped for the other
    backend, so a DAG can pass one set and switch with a single value.
    """
    if execution == "local":
        local_only = {"storage_conn_id", "python", "env"}
        shared = {"dataset", "model", "root", "output_uri", "base_checkpoint", "training_arguments"}
        shared |= {"num_clones", "catalog_file", "trainer_module"}
        return LocalTrainingOperator(
            **{k: v for k, v in kwargs.items() if k in shared | local_only or _base(k)}
        )
    if execution == "kubernetes":
        kwargs = {k: v for k, v in kwargs.items() if k not in {"storage_conn_id", "python", "env"}}
        return __getattr__("KubernetesTrainingOperator")(**kwargs)
    raise ValueError(f"execution must be 'local' or 'kubernetes', got {execution!r}")


def _base(key: str) -> bool:
    """BaseOperator's own arguments (task_id, retries, ...) go to either backend."""
    return key in inspect.signature(BaseOperator.__init__).parameters
