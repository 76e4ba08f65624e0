"""Training operators: one trainer command line, two thin ways to run it (Kubernetes pod, local).

Why one builder: the trainer (``python -m airflow_cvat.trainer train ...``) is the only
implementation of training. :class:`~airflow_cvat.operators.trainer_command.TrainerCommand`
builds its arguments once; the Kubernetes operator puts them in a pod, the local operator in a
subprocess (the astronomer-cosmos idea of one command builder under thin execution adapters).

Both run a :class:`~airflow_cvat.training_plan.TrainingPlan`: the DAG's ``config`` task resolved
it (num_clones merged, arguments parsed, machine chosen) and passes it as ``plan``, which the
operator runs as given. Used on its own, without a plan, an operator resolves one with the same
:func:`~airflow_cvat.training_plan.plan_training`, so a typo fails in milliseconds, before a pod
is created or a process started.

Both derive the run's output folder from the artifact root and the run id
(:func:`airflow_cvat.layout.run_uri`), never from the try number: the trainer resumes from the
checkpoints it finds there, so a retry continues where the failed try stopped.

Import cost: the DAG file imports this module on every parse. So what only a task run needs
(the plan's resolution, the command builder, the layout) is imported when the task runs, and
:class:`KubernetesTrainingOperator` (``KubernetesPodOperator`` pulls in the Kubernetes client,
about 1-2 s) is created on first access (a module ``__getattr__``); a DAG that only trains
locally never pays for it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from airflow_cvat.envelope import EXIT_BAD_INPUT
from airflow_cvat.operators.backends import backend_operator, keyword_parameters
from airflow_cvat.operators.lazy import lazy_attributes
from airflow_cvat.operators.pod import PodCommand, pod_kwargs, pod_operator
from airflow_cvat.operators.process import LocalCommand, checked_result

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_cvat.operators.trainer_command import TrainerCommand
    from airflow_cvat.training_plan import TrainingPlan

TRAINER_MODULE = "airflow_cvat.trainer"
DEFAULT_IMAGE = "ghcr.io/airflow-provider-cvat/trainer:0.1.0"
DEFAULT_STORAGE_SECRET = "cvat-training-storage"
POD_RESULT_FILE = "/airflow/xcom/return.json"
"""Where KubernetesPodOperator's XCom sidecar reads the task's return value."""

TRAINING_TEMPLATE_FIELDS: tuple[str, ...] = (
    "dataset",
    "model",
    "root",
    "output_uri",
    "base_checkpoint",
    "training_arguments",
    "num_clones",
    "catalog_file",
    "plan",
)


def _machine_types() -> str | None:
    """The deployment's machine types (a Variable), read when a task runs, never at parse time."""
    from airflow.sdk import Variable

    from airflow_cvat.machines import MACHINE_TYPES_VARIABLE

    return Variable.get(MACHINE_TYPES_VARIABLE, default=None)


class TrainingParams:
    """Fields and validation shared by both training operators.

    A cooperative mixin: its ``__init__`` takes the training parameters, the backends borrow
    them (see :mod:`airflow_cvat.operators.backends`).
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
        plan: dict[str, Any] | None = None,
        trainer_module: str = TRAINER_MODULE,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)  # the operator's base class first, as for any operator
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
        self.plan = plan
        self.trainer_module = trainer_module

    def training_plan(self, *, kubernetes: bool = False) -> TrainingPlan:
        """The plan ``config`` resolved, as given; else one resolved now (bad input fails the task).

        AirflowFailException: retrying a typo cannot help. The image count is unknown here, so
        the trainer parses again with it (only the default number of steps can change).
        """
        from airflow_cvat.training_plan import PlanError, TrainingPlan, plan_training

        if self.plan:
            return TrainingPlan.from_dict(self.plan)
        try:
            return plan_training(
                self.model,
                self.training_arguments,
                self.num_clones,
                catalog_file=self.catalog_file,
                kubernetes=kubernetes,
                machine_type=getattr(self, "machine_type", None),
                machine_types=_machine_types() if kubernetes else None,
            )
        except PlanError as error:
            raise AirflowFailException(f"invalid training: {error}") from None

    def trainer_command(
        self, context: Context | None, text: str | None, result_file: str | None
    ) -> TrainerCommand:
        from airflow_cvat.layout import run_uri
        from airflow_cvat.operators.trainer_command import TrainerCommand

        run_id = (context or {}).get("run_id") or "dry_run"
        return TrainerCommand(
            dataset=self.dataset,
            output=self.output_uri or run_uri(self.root or "", str(run_id)),
            model=self.model,
            base_checkpoint=self.base_checkpoint or None,
            arguments=text,
            catalog=self.catalog_file,
            result_file=result_file,
        )


# -- local execution ---------------------------------------------------------------------------


class LocalTrainingOperator(LocalCommand, TrainingParams, BaseOperator):
    """Run the trainer as a subprocess of the worker; its output goes line by line to the task log.

    :param dataset: the dataset URI the trainer reads (the export's manifest or folder).
    :param model: catalogue name.
    :param root: artifact root; the output is ``{root}/runs/{run_id}`` unless ``output_uri`` is given.
    :param output_uri: explicit output URI (keep it the same across retries: the trainer resumes there).
    :param base_checkpoint: URI of the base checkpoint (BaseModelPullOperator's XCom).
    :param training_arguments: ``"epochs=100;batch_size=24;num_clones=2"``.
    :param num_clones: replicas, when not in ``training_arguments`` (the DAG form's field).
    :param catalog_file: a catalogue file readable on the worker.
    :param plan: a resolved :class:`~airflow_cvat.training_plan.TrainingPlan` as a dict (the DAG's
        ``config`` gives its ``training_plan``): run as given, instead of ``training_arguments``
        and ``num_clones``.
    :param storage_conn_id: an AWS connection; its credentials, region and endpoint reach the
        trainer as AWS_* environment variables (never argv, never the log). None: the worker's own.
    :param trainer_module: module run with ``python -m``; tests point it at a fake trainer.
    :param python: interpreter (default: the worker's, ``sys.executable``).
    :param env: extra, non-secret environment variables for the trainer.
    :return: the trainer's JSON result (XCom).
    """

    template_fields: Sequence[str] = (*TRAINING_TEMPLATE_FIELDS, "env")
    ui_color = "#e6fbe9"

    # Defined here, not inherited: Airflow applies default_args only to an __init__ a class defines.
    @keyword_parameters(TrainingParams.__init__, LocalCommand.__init__)
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def execute(self, context: Context) -> dict[str, Any]:
        text = self.training_plan().arguments
        finished, result = self.run_command(
            lambda result_file: self.trainer_command(context, text, result_file).argv(
                self.python or sys.executable, self.trainer_module
            ),
            self.environment(),
            prefix="cvat-train-",
            message="Running the trainer: %s",
        )
        # Exit 2 is the trainer refusing its input (too few images, too much dropped, a base
        # checkpoint for another model): a retry would be refused the same way.
        result = checked_result(
            finished, result, command="the trainer", work="training", bad_input_codes=[EXIT_BAD_INPUT]
        )
        prepared = result.get("prepared") or {}
        if prepared.get("line"):  # the split and every drop, once, where people read the task log
            self.log.info("Training data: %s", prepared["line"])
        return result


# -- Kubernetes --------------------------------------------------------------------------------


class KubernetesTrainingMixin(PodCommand, TrainingParams):
    """Train in a pod of the training image, on a named machine type; see KubernetesTrainingOperator.

    :param dataset, model, root, output_uri, base_checkpoint, training_arguments, num_clones, plan:
        as for LocalTrainingOperator (a plan carries the chosen machine). ``catalog_file`` is passed
        to the trainer as ``--catalog``, so it must be readable inside the pod (a path in the image
        or a URI the trainer reads).
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

    @keyword_parameters(TrainingParams.__init__)
    def __init__(
        self,
        *,
        image: str = DEFAULT_IMAGE,
        machine_type: str | None = None,
        storage_secret: str | None = DEFAULT_STORAGE_SECRET,
        **kwargs: Any,
    ) -> None:
        super().__init__(**pod_kwargs(kwargs, image=image, name="cvat-train"))
        self.machine_type = machine_type
        self.storage_secret = storage_secret

    def configure_pod(self, context: Context | None) -> None:
        """Command, scheduling, resources, /dev/shm and the credentials Secret."""
        plan = self.training_plan(kubernetes=True)
        machine = plan.machine or self.resolve_machine(plan.num_clones)  # a local plan names none
        command = self.trainer_command(context, plan.arguments, POD_RESULT_FILE)
        self.log.info("Training on machine type %s: %s", machine.name, json.dumps(machine.to_dict()))
        self.set_command(
            self.trainer_module,
            command.args(),
            machine,
            num_clones=plan.num_clones,
            secrets=[self.storage_secret],
        )


__getattr__ = lazy_attributes(
    globals(),
    {
        "KubernetesTrainingOperator": pod_operator(
            __name__,
            "KubernetesTrainingOperator",
            KubernetesTrainingMixin,
            template_fields=(*TRAINING_TEMPLATE_FIELDS, "machine_type", "storage_secret"),
            ui_color="#e6f1fb",
        ),
        "TrainerCommand": "airflow_cvat.operators.trainer_command",
        # Callers import these from here; the layout owns them.
        "run_output_uri": "airflow_cvat.layout:run_uri",
        "run_uri": "airflow_cvat.layout",
        "safe_run_id": "airflow_cvat.layout",
    },
)


# -- choosing one ------------------------------------------------------------------------------


def training_operator(execution: Literal["local", "kubernetes"] = "local", **kwargs: Any) -> BaseOperator:
    """The training task for ``execution``; the same keyword arguments work for both.

    Backend-only arguments (``image``, ``machine_type``, ``namespace``, ``deferrable``... for
    Kubernetes; ``storage_conn_id``, ``python``, ``env`` for local) are dropped for the other
    backend, so a DAG can pass one set and switch with a single value.
    """
    return backend_operator(
        execution,
        kwargs,
        local=LocalTrainingOperator,
        kubernetes=lambda: __getattr__("KubernetesTrainingOperator"),
    )
