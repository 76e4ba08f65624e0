"""cvat_retrain: export finished CVAT work, fine-tune a detector, publish it for CVAT, email the outcome.

DOC_MD below is what people read in the Airflow UI (the DAG's Docs and each task's details);
settings read at parse time come from the environment because they shape the graph.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, Param

from airflow_cvat.arguments import ARGUMENTS_PATTERN, MAX_CLONES
from airflow_cvat.catalog import DEFAULT_MODEL, load_catalog
from airflow_cvat.coercion import IDS_PATTERN
from airflow_cvat.machines import BUILTIN_MACHINE_TYPES
from airflow_cvat.notifications.email import CVATEmailNotifier, ModelReportEmailOperator
from airflow_cvat.operators.backends import RunBackendOperator
from airflow_cvat.operators.base_model import BaseModelPullOperator
from airflow_cvat.operators.config import RetrainConfigOperator
from airflow_cvat.operators.convert import ConvertModelOperator
from airflow_cvat.operators.export import CVATExportOperator, RecordDatasetOperator
from airflow_cvat.operators.preannotate import preannotate_operator
from airflow_cvat.operators.training import LocalTrainingOperator

DOC_MD = """
# Retrain the CVAT pre-annotation model

## What it does
Exports the annotation work your team has **finished** in CVAT (completed jobs at stage
acceptance), fine-tunes an object detector on it (TF Model Garden; locally or in GPU pods),
publishes a model CVAT can run for automatic annotation, optionally pre-annotates the jobs
nobody has started, and emails a report: how good the model is and whether it replaced `LATEST`.

`config` → `export` + `pull_base_model` → `train_local` / `train_kubernetes` → `publish` →
`pre_annotate` (optional) → `email_report`, `record_dataset`.

## What to set (once, per deployment)
- Connection **cvat_default** (type CVAT): the server URL, a personal access token, the organization.
- Variable **cvat_retrain** (JSON): `root`, the artifact root (`s3://bucket/cvat` or
  `file:///data/cvat`), and for the nightly run its source: `task_ids` (`"12, 13"`) or `project_id`.
  Optional: `catalog_file`, `model`, `arguments`, `emails`, `execution`.
- An SMTP connection (`smtp_default`) for the emails; an AWS connection for `s3://` roots
  (environment variable `CVAT_STORAGE_CONN_ID`).
- Environment (dag-processor and workers): `CVAT_RETRAIN_SCHEDULE` (cron; default `0 2 * * *`;
  `none` switches it off), `CVAT_RETRAIN_KUBERNETES=true` for GPU pods, `CVAT_RETRAIN_EMAILS`,
  `CVAT_QUALITY_MARGIN` (AP50 a new model may lose and still replace LATEST; default 0.02),
  `CVAT_QUALITY_FLOOR` (the AP50 below which a model never becomes LATEST; default 0.3),
  `CVAT_RETRAIN_MODELS` / `CVAT_MACHINE_TYPE_NAMES` (your own models and machine types, listed in the form).

The DAG starts **paused**: unpausing switches the nightly run on. A scheduled run with no source
in the Variable skips and says what to set; one that starts hours late (the catch-up run
unpausing creates) skips too, so unpausing never starts a training by surprise.

## Trigger it from the form
Trigger → fill in **CVAT task ids** (e.g. `12, 13`, or one per line), or a project id, or an
export already in storage; pick a **Base model**; optionally type **Training arguments** such as
`epochs=15000;batch_size=24;initial_learning_rate=0.004` (`epochs` means training steps, as in
the original CVAT training). Every field may stay empty: the defaults and the Variable fill them.
Untick "Unpause" unless you also want the nightly run. Mistakes (unknown model, bad arguments,
no root, unknown machine type...) fail `config` in seconds, all listed in one message.

## Trigger it through the REST API
`POST /api/v2/dags/cvat_retrain/dagRuns` with a JWT from `POST /auth/token`:

    {"logical_date": null,
     "conf": {"task_ids": [12, 13], "model": "ssd-mobilenet-v2-coco",
              "arguments": "epochs=15000;batch_size=24", "emails": ["me@example.com"]}}

Ids may be a list, a string (`"12, 13"`) or one number.

## Trigger it from CVAT
A CVAT webhook on "job updated" posts to the bridge at `/cvat/webhook` in the Airflow api-server;
it checks CVAT's signature and starts one run per task or project when a job is completed. Set it
up with the connection `cvat_webhook` (password: the webhook's secret) and `cvat-setup-webhook`.
"""

TASK_DOCS = {
    "config": "Merges the form or REST conf, the Variable `cvat_retrain` and the defaults, and checks "
    "all of it (source, model, arguments, machine type, root) before anything expensive; lists every "
    "problem in one message. A scheduled run with no source, or one starting hours late, skips here.",
    "export": "Exports the finished jobs (completed, stage acceptance) of the tasks or project from "
    "CVAT into `{root}/datasets/`, with a `manifest.json`; skips the rest of the run when nothing is "
    "finished or the annotations did not change since the last trained dataset.",
    "pull_base_model": "Copies the base model's pretrained checkpoint once into `{root}/base_models/` "
    "and verifies it; later runs reuse it.",
    "train_local": "Fine-tunes the model on the exported dataset in a subprocess on the Airflow worker "
    "(the trainer command line); checkpoints and metrics go to `{root}/runs/{run_id}/`, so a retry resumes.",
    "train_kubernetes": "The same training in a GPU pod of the training image, on the machine type the "
    "run chose, with one replica per GPU (num_clones).",
    "where_to_train": "Chooses the training task the run's `execution` names (local or Kubernetes).",
    "publish": "Evaluates the trained model, exports a SavedModel, the CVAT nuclio function and the "
    "auto-annotation module into `{root}/models/{name}/{version}/`, and moves `LATEST` only when the "
    "model is at least as good as the previous one (within CVAT_QUALITY_MARGIN) and reaches "
    "CVAT_QUALITY_FLOOR. Its TensorFlow checks and conversions run where training ran (a subprocess, "
    "or a CPU pod of the training image).",
    "record_dataset": "Records the dataset as trained on, so the next nightly run skips it when "
    "nothing changed.",
    "pre_annotate": "Optional (the form's Pre-annotate switch): runs the model LATEST names over jobs "
    "nobody has started and uploads its shapes to CVAT with source auto, where training ran (a subprocess "
    "or a pod); skipped when switched off.",
    "email_report": "Emails the report: where the model is, its AP, whether it replaced LATEST, "
    "predictions on validation images and the pre-annotation summary.",
}
"""One paragraph per task, shown in the task's details in the UI."""

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
    name: f"{name} ({machine.gpus or 'no'} GPU{'s' if machine.gpus > 1 else ''})"
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
    # Default empty, so that a deployment's model in the Variable is what a plain Trigger trains.
    "model": choice_param(None, MODEL_CHOICES, f"Deployment default (Variable, else {DEFAULT_MODEL})",
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
    doc_md=DOC_MD,
    default_args={"on_failure_callback": CVATEmailNotifier(smtp_conn_id=SMTP_CONN_ID, publish_task_id=None)},
) as dag:
    # Classic operators, not @task: airflow.sdk.task costs more parse time than the rest of this file.
    resolved = RetrainConfigOperator(
        task_id="config", kubernetes_enabled=KUBERNETES, default_execution=DEFAULT_EXECUTION
    )

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
        "catalog_file": cfg("catalog_file"),
        "plan": cfg("training_plan"),  # arguments, num_clones and machine, resolved once by config
    }
    train_tasks = [LocalTrainingOperator(task_id="train_local", storage_conn_id=STORAGE_CONN_ID, **training)]
    if KUBERNETES:
        from airflow_cvat.operators.training import KubernetesTrainingOperator

        train_tasks.append(KubernetesTrainingOperator(task_id="train_kubernetes", **training))

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
        execution=cfg("execution"),  # TensorFlow's half runs where training ran: a subprocess or a pod
        trigger_rule="none_failed_min_one_success",
    )

    # Only once published is this dataset 'trained on': the next nightly run skips it if unchanged.
    record_dataset = RecordDatasetOperator(
        task_id="record_dataset", manifest_uri=export.output, storage_conn_id=STORAGE_CONN_ID
    )

    resolved >> [export, pull]
    if KUBERNETES:
        from airflow_cvat.operators.training_branch import TrainingBackendBranchOperator

        where_to_train = TrainingBackendBranchOperator(task_id="where_to_train")
        [export, pull] >> where_to_train >> train_tasks
    else:
        [export, pull] >> train_tasks[0]
    # Optional (the pre_annotate param): skipped when off, which email_report's trigger rule allows.
    # The backend is the run's `execution` (as for training and publish), chosen when it runs.
    pre_annotate = RunBackendOperator(
        task_id="pre_annotate",
        execution=cfg("execution"),
        factory=preannotate_operator,
        arguments={
            "enabled": cfg("pre_annotate"),
            "task_ids": cfg("pre_annotate_task_ids"),
            "project_id": cfg("pre_annotate_project_id"),
            "model_uri": "{{ ti.xcom_pull(task_ids='publish') }}",
            "threshold": cfg("pre_annotate_threshold"),
            "cvat_conn_id": CVAT_CONN_ID,
            "storage_conn_id": STORAGE_CONN_ID,
            "machine_type": cfg("machine_type"),
        },
    )
    report = ModelReportEmailOperator(
        task_id="email_report",
        outcome=convert.output,
        to=cfg("emails"),
        smtp_conn_id=SMTP_CONN_ID,
        pre_annotation="{{ ti.xcom_pull(task_ids='pre_annotate') }}",
        trigger_rule="none_failed_min_one_success",
    )
    train_tasks >> convert >> [record_dataset, report]
    convert >> pre_annotate >> report

    for each in dag.tasks:
        each.doc_md = TASK_DOCS.get(each.task_id)
