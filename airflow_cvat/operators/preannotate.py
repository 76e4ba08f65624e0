"""Pre-annotation operators: a published model annotates CVAT frames nobody has annotated yet.

The work is done by one command, ``python -m airflow_cvat.trainer.preannotate`` (it imports
TensorFlow; see that module for what it uploads and why a rerun adds no duplicates). As for
training (:mod:`airflow_cvat.operators.training`), one command builder,
:class:`~airflow_cvat.preannotation_request.PreAnnotationRequest` (shared with the command, which
reads its argv back and applies the same checks), serves two thin ways to run it:

* :class:`PreAnnotateOperator`: a subprocess of the worker, its output streamed into the task log.
  The CVAT connection's token (or user and password) reaches it as ``CVAT_*`` environment
  variables, never its command line; storage credentials as ``AWS_*`` from ``storage_conn_id``.
* ``KubernetesPreAnnotateOperator``: a pod of the training image. Credentials come from
  Kubernetes Secrets mounted with ``envFrom`` (``cvat_secret``: ``CVAT_ACCESS_TOKEN``, or
  ``CVAT_USERNAME`` and ``CVAT_PASSWORD``, optionally ``CVAT_ORGANIZATION``; ``storage_secret``:
  ``AWS_*``); neither the pod spec nor the rendered templates hold them. Created on first access
  (module ``__getattr__``): importing this module never imports the Kubernetes client.

:func:`preannotate_operator` picks one by ``execution`` ("local" or "kubernetes") with one set of
keyword arguments. Both check their input when the task runs, before a process or pod starts
(AirflowFailException: a typo is not worth a retry); both return the command's JSON summary
(frames, shapes, per-label counts, seconds of inference and of upload) as the XCom, and both skip
(AirflowSkipException) when ``enabled`` renders false, which is how a DAG makes the step optional.

Which model: ``model_uri`` is a published version folder, a model folder (its LATEST is read when
the command runs) or a LATEST file; or ``root`` and ``model_name`` (``{root}/models/{name}``); or
the publish step's XCom (:class:`~airflow_cvat.operators.convert.ConvertModelOperator`'s outcome):
the new version when it moved LATEST, else LATEST (the model that passed the quality gate).

Import cost: the DAG file imports this module on every parse, so the request's checks and the
command builder (:mod:`airflow_cvat.operators.preannotate_run`), the shared request contract and
the CVAT hook are imported when the task runs.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from airflow_cvat.envelope import ERROR as STATUS_ERROR
from airflow_cvat.envelope import EXIT_BAD_INPUT, OK
from airflow_cvat.operators import DEFAULT_CVAT_CONN_ID
from airflow_cvat.operators.backends import backend_operator, keyword_parameters
from airflow_cvat.operators.lazy import lazy_attributes
from airflow_cvat.operators.pod import PodCommand, pod_kwargs, pod_operator
from airflow_cvat.operators.process import LocalCommand, checked_result
from airflow_cvat.operators.training import DEFAULT_IMAGE, DEFAULT_STORAGE_SECRET, POD_RESULT_FILE

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_cvat.hooks.cvat import CVATHook
    from airflow_cvat.operators.preannotate_run import Request

DEFAULT_CVAT_SECRET = "cvat-credentials"

PREANNOTATE_TEMPLATE_FIELDS: tuple[str, ...] = (
    "task_ids",
    "project_id",
    "job_ids",
    "model_uri",
    "root",
    "model_name",
    "threshold",
    "job_states",
    "existing",
    "masks",
    "batch_size",
    "cvat_url",
    "enabled",
)


def model_from_outcome(outcome: dict[str, Any]) -> str | None:
    """The model a publish outcome points pre-annotation at: the new version if it moved LATEST.

    Why LATEST otherwise: a version that failed the quality gate (or was not published at all)
    is not what people should correct; LATEST is the best model that passed.
    """
    latest = outcome.get("latest") or {}
    if outcome.get("published") and latest.get("moved") and outcome.get("uri"):
        return str(outcome["uri"])
    if latest.get("below_floor"):
        return None  # this run's model is below the quality floor: it must not pre-annotate
    if "current" in latest and not latest["current"]:
        return None  # no model of this name passed the gate (e.g. the first one is below the floor)
    return latest.get("uri") or None


class PreAnnotateParams:
    """Fields and checks shared by both pre-annotation operators; ``__init__`` takes them all.

    The backends' own ``__init__`` borrow its signature (:mod:`airflow_cvat.operators.backends`).
    """

    log: Any

    def __init__(
        self,
        *,
        task_ids: Any = None,
        project_id: Any = None,
        job_ids: Any = None,
        model_uri: Any = None,
        root: str | None = None,
        model_name: str | None = None,
        threshold: Any = 0.5,
        job_states: Any = ("new",),
        existing: str = "skip",
        masks: str = "polygon",
        batch_size: Any = 16,
        cvat_conn_id: str = DEFAULT_CVAT_CONN_ID,
        cvat_url: str | None = None,
        enabled: Any = True,
        trainer_module: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not model_uri and not (root and model_name):
            raise ValueError(
                "give model_uri, or root and model_name: model_uri is a published version, a model "
                "folder, a LATEST file or the publish step's XCom; root and model_name mean "
                "{root}/models/{model_name}"
            )
        self.task_ids = task_ids
        self.project_id = project_id
        self.job_ids = job_ids
        self.model_uri = model_uri
        self.root = root
        self.model_name = model_name
        self.threshold = threshold
        self.job_states = job_states
        self.existing = existing
        self.masks = masks
        self.batch_size = batch_size
        self.cvat_conn_id = cvat_conn_id
        self.cvat_url = cvat_url
        self.enabled = enabled
        self.trainer_module = trainer_module

    def skip_if_disabled(self) -> None:
        from airflow_cvat.operators.preannotate_run import is_enabled

        if not is_enabled(self.enabled):
            raise AirflowSkipException("pre-annotation is switched off (enabled is false)")

    def validated(self) -> Request:
        """Every rendered field checked at once; AirflowFailException names each field and what is allowed.

        The option rules are the command's own (:class:`PreAnnotationRequest`): what passes here
        passes there.
        """
        from dataclasses import replace

        from airflow_cvat.operators.preannotate_run import Request, collected, ids, number, states
        from airflow_cvat.preannotation_request import PreAnnotationRequest

        problems: list[str] = []
        task_ids = collected(problems, ids, self.task_ids, "task_ids")
        project = collected(problems, ids, self.project_id, "project_id")
        if len(project) > 1:
            problems.append(f"project_id must be one CVAT project id, got {self.project_id!r}")
        options = PreAnnotationRequest(
            model_uri="",
            cvat_url="",
            task_ids=(),
            job_ids=collected(problems, ids, self.job_ids, "job_ids"),
            job_states=states(self.job_states),
            threshold=number(self.threshold, float),
            batch_size=number(self.batch_size, int),
            existing=self.existing,
            masks=self.masks,
        )
        if not (task_ids or options.job_ids or project or problems):
            problems.append(
                "task_ids: give at least one CVAT task id (or a project_id, or job_ids) to pre-annotate"
            )
        problems += options.option_problems()
        if problems:
            raise AirflowFailException("; ".join(problems))
        options = replace(options, model_uri=self.model_location())
        return Request(task_ids=task_ids, project_id=project[0] if project else None, options=options)

    def model_location(self) -> str:
        model = self.model_uri
        if isinstance(model, dict):
            gate = (model.get("latest") or {}).get("reason")
            model = model_from_outcome(model)
            if not model:
                raise AirflowSkipException(
                    f"no model passed the quality gate, nothing to pre-annotate with: {gate}"
                )
        if not model:
            model = f"{str(self.root).rstrip('/')}/models/{self.model_name}"
        return str(model).rstrip("/")

    def resolve_task_ids(self, request: Request, hook: CVATHook | None) -> tuple[int, ...]:
        """The tasks to give the command: those named, a project's, and the tasks of named jobs."""
        task_ids = list(request.task_ids)
        if request.project_id is not None or (request.job_ids and not task_ids):
            assert hook is not None
            if request.project_id is not None:
                task_ids += [int(t.id) for t in hook.get_project_tasks(request.project_id)]
            if request.job_ids and not request.task_ids:
                task_ids += [int(hook.get_job(j).task_id) for j in request.job_ids]
        task_ids = list(dict.fromkeys(task_ids))
        if not task_ids:
            raise AirflowFailException(f"project {request.project_id} has no tasks to pre-annotate")
        return tuple(task_ids)

    def needs_cvat_calls(self, request: Request) -> bool:
        return request.project_id is not None or bool(request.job_ids and not request.task_ids)

    def log_summary(self, result: dict[str, Any]) -> None:
        labels = ", ".join(f"{k} {v}" for k, v in (result.get("per_label") or {}).items()) or "none"
        self.log.info(
            "Pre-annotated %s frame(s) of task(s) %s: %s shape(s) (%s); %.1f s inference, %.1f s upload",
            result.get("frames"),
            result.get("task_ids"),
            result.get("shapes"),
            labels,
            result.get("seconds_inference") or 0.0,
            result.get("seconds_upload") or 0.0,
        )


# -- local execution ---------------------------------------------------------------------------


class PreAnnotateOperator(LocalCommand, PreAnnotateParams, BaseOperator):
    """Pre-annotate CVAT tasks with a published model, in a subprocess of the worker.

    :param task_ids: CVAT task ids (a list, a number or "1,2").
    :param project_id: a CVAT project: all its tasks (listed when the task runs).
    :param job_ids: only these jobs (their tasks are looked up when no task_ids are given).
    :param model_uri: a published version folder, a model folder, a LATEST file, or the publish
        step's XCom. Or give ``root`` and ``model_name`` instead.
    :param threshold: lowest detection score uploaded (0..1).
    :param job_states: jobs in these states are annotated (default: new, work nobody started).
    :param existing: frames holding only earlier auto shapes: "skip" them, or "replace" the shapes.
    :param masks: Mask R-CNN output as "polygon", "mask" or "box".
    :param batch_size: frames per model call.
    :param cvat_conn_id: the CVAT connection (URL, token or user and password, organization).
    :param cvat_url: the server URL as the command reaches it, when it differs from the connection's.
    :param storage_conn_id: AWS connection for s3:// models (AWS_* in the command's environment).
    :param enabled: false skips the task (AirflowSkipException); templated, for a DAG param.
    :param trainer_module: the module run with ``python -m`` (None: the pre-annotation command,
        ``airflow_cvat.trainer.preannotate``); ``python``: the interpreter.
    :param env: extra, non-secret environment variables for the command.
    :return: the command's JSON summary (XCom).
    """

    template_fields: Sequence[str] = PREANNOTATE_TEMPLATE_FIELDS
    ui_color = "#fdf1e0"

    # Defined here, not inherited: Airflow applies default_args only to an __init__ a class defines.
    @keyword_parameters(PreAnnotateParams.__init__, LocalCommand.__init__)
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_cvat.hooks.cvat import CVATError, CVATHook
        from airflow_cvat.operators.preannotate_run import check_published_model, command_argv

        self.skip_if_disabled()
        request = self.validated()
        check_published_model(request.model_uri, self.storage_conn_id)
        hook = CVATHook(self.cvat_conn_id)
        try:
            cvat_url = self.cvat_url or hook.server_url
            credentials = hook.credentials_environment()
        except CVATError as error:
            raise AirflowFailException(str(error)) from None
        task_ids = self.resolve_task_ids(request, hook)
        env = {k: v for k, v in self.environment().items() if not k.startswith("CVAT_")}
        env.update(credentials)
        finished, result = self.run_command(
            lambda result_file: command_argv(
                request.command(cvat_url, task_ids, result_file),
                self.python or sys.executable,
                self.trainer_module,
            ),
            env,
            prefix="cvat-preannotate-",
            message="Pre-annotating: %s",
        )
        result = checked_result(
            finished,
            result,
            command="pre-annotation",
            work="pre-annotation",
            bad_input_codes=[EXIT_BAD_INPUT],
        )
        self.log_summary(result)
        return result


# -- Kubernetes --------------------------------------------------------------------------------


class KubernetesPreAnnotateMixin(PodCommand, PreAnnotateParams):
    """Pre-annotate in a pod of the training image; see the module docstring.

    :param task_ids, project_id, job_ids, model_uri, root, model_name, threshold, job_states,
        existing, masks, batch_size, cvat_conn_id, cvat_url, enabled: as for PreAnnotateOperator.
        Without ``cvat_url`` the connection's URL, organization and verify_ssl reach the pod as
        plain environment variables; its secret never does.
    :param image: the training image (it has TensorFlow and this package).
    :param machine_type: a machine type name (:mod:`airflow_cvat.machines`); None: the smallest
        GPU type, "cpu" for a CPU pod.
    :param cvat_secret: Kubernetes Secret with CVAT_ACCESS_TOKEN (or CVAT_USERNAME and
        CVAT_PASSWORD) and optionally CVAT_ORGANIZATION, mounted with envFrom.
    :param storage_secret: Kubernetes Secret with AWS_* for the model's storage; None: the pod's
        own identity.

    Everything else is KubernetesPodOperator's (namespace, deferrable, kubernetes_conn_id, ...).
    The model is not looked for before the pod starts (the worker may not reach the storage the
    pod reaches); the command checks it first and exits with a clear error.
    """

    @keyword_parameters(PreAnnotateParams.__init__)
    def __init__(
        self,
        *,
        image: str = DEFAULT_IMAGE,
        machine_type: str | None = None,
        cvat_secret: str = DEFAULT_CVAT_SECRET,
        storage_secret: str | None = DEFAULT_STORAGE_SECRET,
        **kwargs: Any,
    ) -> None:
        super().__init__(**pod_kwargs(kwargs, image=image, name="cvat-preannotate"))
        self.machine_type = machine_type
        self.cvat_secret = cvat_secret
        self.storage_secret = storage_secret

    def execute(self, context: Context) -> Any:
        self.skip_if_disabled()
        return self._checked(super().execute(context))  # prepares the pod first: see PodCommand

    def trigger_reentry(self, context: Context, event: dict[str, Any]) -> Any:
        """Deferrable mode ends here (KubernetesPodOperator's resume method) with the result."""
        return self._checked(super().trigger_reentry(context, event))  # type: ignore[misc]

    def _checked(self, result: Any) -> Any:
        if isinstance(result, dict) and result.get("status") == OK:
            self.log_summary(result)
        elif isinstance(result, dict) and result.get("status") == STATUS_ERROR:
            raise AirflowException(f"pre-annotation failed: {result.get('error')}")
        return result

    def configure_pod(self, context: Context | None) -> None:
        """Command, scheduling, resources and the credentials Secrets."""
        from airflow_cvat.hooks.cvat import CVATError, CVATHook
        from airflow_cvat.preannotation_request import MODULE as PREANNOTATE_MODULE

        request = self.validated()
        machine = self.resolve_machine()
        hook = CVATHook(self.cvat_conn_id) if not self.cvat_url or self.needs_cvat_calls(request) else None
        plain_env = {"PYTHONUNBUFFERED": "1"}
        try:
            cvat_url = self.cvat_url
            if not cvat_url:
                assert hook is not None
                cvat_url = hook.server_url
                if hook.organization:
                    plain_env["CVAT_ORGANIZATION"] = hook.organization
                plain_env["CVAT_VERIFY_SSL"] = "true" if hook.verify_ssl else "false"
        except CVATError as error:
            raise AirflowFailException(str(error)) from None
        task_ids = self.resolve_task_ids(request, hook)
        command = request.command(cvat_url, task_ids, POD_RESULT_FILE)
        self.log.info("Pre-annotating on machine type %s: %s", machine.name, shlex.join(command.to_argv()))
        self.set_command(
            self.trainer_module or PREANNOTATE_MODULE,
            command.to_argv(),
            machine,
            num_clones=1,
            secrets=[self.cvat_secret, self.storage_secret],
            env=plain_env,
        )


__getattr__ = lazy_attributes(
    globals(),
    {
        "KubernetesPreAnnotateOperator": pod_operator(
            __name__,
            "KubernetesPreAnnotateOperator",
            KubernetesPreAnnotateMixin,
            template_fields=(*PREANNOTATE_TEMPLATE_FIELDS, "machine_type", "cvat_secret", "storage_secret"),
            ui_color="#fbe9e6",
        ),
        "Request": "airflow_cvat.operators.preannotate_run",
        "command_argv": "airflow_cvat.operators.preannotate_run",
        "check_published_model": "airflow_cvat.operators.preannotate_run",
    },
)


# -- choosing one ------------------------------------------------------------------------------


def preannotate_operator(execution: Literal["local", "kubernetes"] = "local", **kwargs: Any) -> BaseOperator:
    """The pre-annotation task for ``execution``; the same keyword arguments work for both.

    Backend-only arguments are dropped for the other backend (``storage_conn_id``, ``python``,
    ``env`` are local; ``image``, ``machine_type``, the secrets and KubernetesPodOperator's own,
    such as ``namespace``, are Kubernetes), so a DAG switches with a single value.
    """
    return backend_operator(
        execution,
        kwargs,
        local=PreAnnotateOperator,
        kubernetes=lambda: __getattr__("KubernetesPreAnnotateOperator"),
    )
