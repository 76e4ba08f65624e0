"""cvat_retrain: export finished CVAT work, fine-tune a detector, publish it for CVAT, email the outcome.

One DAG serves the nightly schedule (the sources in the `cvat_retrain` Variable; skipped when
their annotations did not change since the last published model), manual runs from the UI's
form, REST API runs and CVAT webhooks (both with the same conf as the form).

Optional last step (the `pre_annotate` param): the model LATEST names after publishing annotates
the jobs nobody has started (state new) of `pre_annotate_task_ids` (default: the run's own source
tasks) and uploads shapes with source auto; its summary goes into the email. Switched off, the
task is skipped and the email is sent as before.

Deployment settings, read at run time from the Airflow Variable `cvat_retrain` (JSON): root (the
artifact root URI), catalog_file, model_name, and defaults for any form field (task_ids or
project_id for the nightly run, model, arguments, emails, execution). Machine types: the
Variable `cvat_machine_types`.

Read at parse time from the environment (they shape the graph, so they cannot wait):
CVAT_RETRAIN_SCHEDULE (cron; default 02:00 nightly; "none" turns it off), CVAT_RETRAIN_KUBERNETES
("true" adds GPU training in pods and makes it the default; without it training runs locally and
the DAG never imports the Kubernetes client), CVAT_CONN_ID (default cvat_default),
CVAT_STORAGE_CONN_ID (the connection for s3:// roots, e.g. aws_default), CVAT_SMTP_CONN_ID
(default smtp_default), CVAT_RETRAIN_EMAILS (comma-separated default recipients, also of failure
emails), CVAT_QUALITY_MARGIN (AP50 a new model may lose and still replace LATEST; default 0.02).
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_cvat.arguments import ARGUMENTS_PATTERN, MAX_CLONES
from airflow_cvat.catalog import load_catalog
from airflow_cvat.machines import BUILTIN_MACHINE_TYPES
from airflow_cvat.notifications.email import CVATEmailNotifier, ModelReportEmailOperator
from airflow_cvat.operators.base_model import BaseModelPullOperator
from airflow_cvat.operators.convert import ConvertModelOperator
from airflow_cvat.operators.export import CVATExportOperator
from airflow_cvat.operators.preannotate import preannotate_operator
from airflow_cvat.operators.training import LocalTrainingOperator
from airflow_cvat.retrain_config import DEFAULT_MODEL, IDS_PATTERN

SCHEDULE = os.environ.get("CVAT_RETRAIN_SCHEDULE", "0 2 * * *")
KUBERNETES = os.environ.get("CVAT_RETRAIN_KUBERNETES", "false").lower() in ("1", "true", "yes")
CVAT_CONN_ID = os.environ.get("CVAT_CONN_ID", "cvat_default")
STORAGE_CONN_ID = os.environ.get("CVAT_STORAGE_CONN_ID") or None
SMTP_CONN_ID = os.environ.get("CVAT_SMTP_CONN_ID", "smtp_default")
QUALITY_MARGIN = float(os.environ.get("CVAT_QUALITY_MARGIN", "0.02"))
QUALITY_FLOOR = float(os.environ.get("CVAT_QUALITY_FLOOR", "0.3"))
EMAILS = [e for e in os.environ.get("CVAT_RETRAIN_EMAILS", "").replace(";", ",").split(",") if e.strip()]
CONFIG = "ti.xcom_pull(task_ids='config')"


def _names(variable: str) -> list[str]:
    """Comma-separated names from an environment variable (extra choices for the form)."""
    return [name.strip() for name in os.environ.get(variable, "").split(",") if name.strip()]


def cfg(key: str) -> str:
    """A template reading one resolved setting of this run (rendered as a native object)."""
    return "{{ " + CONFIG + "['" + key + "'] }}"


DEFAULT_EXECUTION = "kubernetes" if KUBERNETES else "local"
EXECUTION_CHOICES = {
    "local": "Local: a process on the Airflow worker",
    **({"kubernetes": "Kubernetes: GPU pods (machine type below)"} if KUBERNETES else {}),
}
MODEL_CHOICES = {
    name: f"{name}: {spec.description.split('. ')[0]}" for name, spec in load_catalog().items()
} | {name: f"{name} (this deployment's catalogue)" for name in _names("CVAT_RETRAIN_MODELS")}
MACHINE_CHOICES = {
    name: f"{name} ({machine.gpus} GPU{'s' if machine.gpus != 1 else ''})"
    for name, machine in BUILTIN_MACHINE_TYPES.items()
} | {name: name for name in _names("CVAT_MACHINE_TYPE_NAMES")}


def choice_param(default: str | None, labels: dict[str, str], default_label: str, **schema: str) -> Param:
    """A drop-down of named choices whose empty value (null) reads as `default_label`, never as
    the word null; clearing the field picks it too."""
    return Param(default, type=["null", "string"], enum=[None, *labels],
                 values_display={"null": default_label, **labels}, **schema)  # fmt: skip


def ids_param(title: str, description: str) -> Param:
    """CVAT ids typed as text ("12, 13" or one per line), the one widget the trigger form cannot
    corrupt while a person types; REST calls and the webhook bridge may still send [12, 13] or 12,
    so the schema takes those too (`config` turns all of them into a list of ints)."""
    return Param(
        None,
        anyOf=[{"type": "null"}, {"type": "string"}, {"type": "integer", "minimum": 1},
               {"type": "array", "items": {"type": ["integer", "string"]}}],
        pattern=IDS_PATTERN, title=title, description=description,
    )  # fmt: skip


PARAMS = {
    "task_ids": ids_param("CVAT task ids", "e.g. 12, 13 (commas, spaces or one per line). "
                          "Give task ids, a project id or an export in storage."),
    "project_id": Param(None, type=["null", "integer"], minimum=1, title="CVAT project id",
                        description="e.g. 4: every task of the project."),
    "source_uri": Param(None, type=["null", "string"], title="Export already in storage",
                        description="e.g. s3://bucket/exports/task12.zip (COCO 1.0 or CVAT for images 1.1)."),
    "model": choice_param(DEFAULT_MODEL, MODEL_CHOICES, "Deployment default (the Variable's model)",
                          title="Base model", description="What to fine-tune. Models of your own catalogue "
                          "file: list their names in CVAT_RETRAIN_MODELS."),
    "arguments": Param(None, type=["null", "string"], pattern=ARGUMENTS_PATTERN, title="Training arguments",
                       description="e.g. epochs=15000;batch_size=24;initial_learning_rate=0.004 "
                       "(epochs means training steps, as in the original CVAT training). "
                       "Empty: the model's defaults."),
    "machine_type": choice_param(None, MACHINE_CHOICES, "Smallest GPU machine with num_clones GPUs",
                                 title="Machine type", description="Kubernetes only: what a pod asks for."),
    "num_clones": Param(1, type=["null", "integer"], minimum=1, maximum=MAX_CLONES, title="GPUs (num_clones)",
                        description="GPUs training uses (1 to 64); frcnn-nas-coco needs 2 or more."),
    "emails": Param(EMAILS or None, type=["null", "array"], items={"type": "string"},
                    title="Email the result to", description="One address per line."),
    "only_finished": Param(True, type=["null", "boolean"], title="Only finished jobs",
                           description="Export only jobs completed at stage acceptance; off: every job."),
    "execution": choice_param(None, EXECUTION_CHOICES, f"Deployment default ({DEFAULT_EXECUTION})",
                              title="Where training runs"),
    "pre_annotate": Param(False, type=["null", "boolean"], title="Pre-annotate with the new model",
                          description="After publishing, run the model (LATEST after the quality gate) "
                          "over jobs in state new and upload its shapes (source auto) to CVAT."),
    "pre_annotate_task_ids": ids_param("Tasks to pre-annotate",
                                       "e.g. 14, 15. Empty: the run's own source tasks."),
    "pre_annotate_threshold": Param(0.5, type=["null", "number"], minimum=0, maximum=1,
                                    title="Pre-annotation score threshold", description="0 to 1; e.g. 0.5."),
}  # fmt: skip


with DAG(
    dag_id="cvat_retrain",
    description="Retrain the CVAT pre-annotation model on finished annotation work",
    schedule=None if SCHEDULE.lower() == "none" else SCHEDULE,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    # Paused when Airflow first sees it: unpausing is the deliberate act that starts nightly runs.
    is_paused_upon_creation=True,
    max_active_runs=1,
    params=PARAMS,
    render_template_as_native_obj=True,
    tags=["cvat", "training"],
    doc_md=__doc__,
    default_args={"on_failure_callback": CVATEmailNotifier(smtp_conn_id=SMTP_CONN_ID, publish_task_id=None)},
) as dag:

    @task
    def config(**context) -> dict:
        """Resolve and validate the whole run now: a typo must not cost an export or a GPU hour."""
        import json

        from airflow.sdk import Variable
        from airflow.sdk.exceptions import AirflowSkipException

        from airflow_cvat.retrain_config import NO_SOURCE_SKIP, has_source, resolve

        settings = json.loads(Variable.get("cvat_retrain", default="{}"))
        defaults = {**{k: v for k, v in context["params"].items() if v not in (None, [], "")}, **settings}
        defaults.setdefault("execution", DEFAULT_EXECUTION)
        conf = dict(context["dag_run"].conf or {})
        if context["dag_run"].run_type == "scheduled" and not has_source(conf, defaults):
            raise AirflowSkipException(NO_SOURCE_SKIP)
        machine_types = Variable.get("cvat_machine_types", default=None)
        resolved = resolve(conf, defaults, machine_types=machine_types)
        if resolved.execution == "kubernetes" and not KUBERNETES:
            raise ValueError(
                "execution 'kubernetes' is not enabled in this deployment: set CVAT_RETRAIN_KUBERNETES=true "
                "for the dag-processor and workers (and a kubernetes_default connection), or use 'local'"
            )
        resolved = resolved.to_dict()
        run = context["run_id"]
        resolved["dataset_uri"] = f"{resolved['root']}/datasets/{resolved['source_key']}/{_safe(run)}"
        return resolved

    def _safe(run_id: str) -> str:
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)

    resolved = config()

    export = CVATExportOperator(
        task_id="export",
        destination=cfg("dataset_uri"),
        task_ids=cfg("task_ids"),
        project_id=cfg("project_id"),
        source_uri=cfg("source_uri"),
        all_jobs="{{ not " + CONFIG + "['only_finished'] }}",
        cvat_conn_id=CVAT_CONN_ID,
        storage_conn_id=STORAGE_CONN_ID,
        record_latest=False,
    )

    pull = BaseModelPullOperator(
        task_id="pull_base_model",
        model=cfg("model"),
        root=cfg("root"),
        catalog_file=cfg("catalog_file"),
        storage_conn_id=STORAGE_CONN_ID,
    )

    training = {
        "dataset": "{{ ti.xcom_pull(task_ids='export') }}",
        "model": cfg("model"),
        "root": cfg("root"),
        "base_checkpoint": "{{ ti.xcom_pull(task_ids='pull_base_model') }}",
        "training_arguments": cfg("arguments"),
        "catalog_file": cfg("catalog_file"),
    }
    train_tasks = [LocalTrainingOperator(task_id="train_local", storage_conn_id=STORAGE_CONN_ID, **training)]
    if KUBERNETES:
        from airflow_cvat.operators.training import KubernetesTrainingOperator

        train_tasks.append(
            KubernetesTrainingOperator(
                task_id="train_kubernetes", machine_type=cfg("machine_type"), **training
            )
        )

    convert = ConvertModelOperator(
        task_id="publish",
        run_uri="{{ ti.xcom_pull(task_ids="
        + repr([t.task_id for t in train_tasks])
        + ") | select | first }}",
        root=cfg("root"),
        model_name=cfg("published_name"),
        dataset_manifest="{{ ti.xcom_pull(task_ids='export') }}",
        quality_margin=QUALITY_MARGIN,
        quality_floor=QUALITY_FLOOR,
        storage_conn_id=STORAGE_CONN_ID,
        trigger_rule="none_failed_min_one_success",
    )

    @task
    def record_dataset(manifest_uri: str) -> str:
        """Only now is this dataset 'trained on': the next nightly run skips it if unchanged."""
        from airflow_cvat.operators.export import record_latest_export

        return record_latest_export(manifest_uri, STORAGE_CONN_ID)

    resolved >> [export, pull]
    if KUBERNETES:

        @task.branch
        def where_to_train(settings: dict) -> str:
            return "train_kubernetes" if settings["execution"] == "kubernetes" else "train_local"

        [export, pull] >> where_to_train(resolved) >> train_tasks
    else:
        [export, pull] >> train_tasks[0]
    # Optional (the pre_annotate param): skipped when off, which email_report's trigger rule allows.
    pre_annotate = preannotate_operator(
        "kubernetes" if KUBERNETES else "local",
        task_id="pre_annotate",
        enabled=cfg("pre_annotate"),
        task_ids=cfg("pre_annotate_task_ids"),
        project_id=cfg("pre_annotate_project_id"),
        model_uri="{{ ti.xcom_pull(task_ids='publish') }}",
        threshold=cfg("pre_annotate_threshold"),
        cvat_conn_id=CVAT_CONN_ID,
        storage_conn_id=STORAGE_CONN_ID,
        machine_type=cfg("machine_type"),
    )
    report = ModelReportEmailOperator(
        task_id="email_report",
        outcome=convert.output,
        to=cfg("emails"),
        smtp_conn_id=SMTP_CONN_ID,
        pre_annotation="{{ ti.xcom_pull(task_ids='pre_annotate') }}",
        trigger_rule="none_failed_min_one_success",
    )
    train_tasks >> convert >> [record_dataset(export.output), report]
    convert >> pre_annotate >> report
