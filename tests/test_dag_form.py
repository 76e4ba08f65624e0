"""cvat_retrain's trigger form and first use, as Airflow itself sees them (no training here).

The form is built from the params' JSON Schema as the DAG is serialized; a run's conf (form,
REST, webhook) is validated against the same schema before the run exists. The browser side of
the form is tested by the Playwright test; here, what the schema promises.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from tests.fixtures.airflow import task_states

DAG_FILE = Path(__file__).resolve().parents[1] / "dags" / "cvat_retrain.py"


@pytest.fixture(scope="module")
def serialized():
    """The DAG as the api-server reads it (serialized, then deserialized)."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.serialized_objects import DagSerialization

    bag = DagBag(str(DAG_FILE))
    assert not bag.import_errors, bag.import_errors
    dag = bag.dags["cvat_retrain"]
    return DagSerialization.from_dict(DagSerialization.to_dict(dag))


def schemas(dag) -> dict[str, dict]:
    return {name: param.schema for name, param in dag.params.items()}


def validate(dag, conf: dict) -> None:
    dag.params.deep_merge(conf).validate()


def test_the_defaults_trigger_and_nothing_reads_as_required(serialized):
    """The UI marks a field required (red *, Trigger disabled while empty) when its schema has a
    type without "null"; every field here has a default or may stay empty."""
    validate(serialized, {})
    for name, schema in schemas(serialized).items():
        types = schema.get("type")
        assert types is None or (isinstance(types, list) and "null" in types), (name, types)
    assert serialized.is_paused_upon_creation is True


@pytest.mark.parametrize("ids", ["12, 13", "12\n13", "12 13", [12, 13], ["12"], 12, None])
def test_ids_are_taken_as_the_form_rest_and_webhook_send_them(serialized, ids):
    validate(serialized, {"task_ids": ids, "pre_annotate_task_ids": ids})


@pytest.mark.parametrize(
    ("conf", "error"),
    [
        ({"task_ids": "12;13"}, "task_ids"),
        ({"pre_annotate_task_ids": "x"}, "pre_annotate_task_ids"),
        ({"arguments": "epochs=100 batch_size=2"}, "arguments"),
        ({"arguments": "epochs"}, "arguments"),
        ({"num_clones": 0}, "num_clones"),
        ({"pre_annotate_threshold": 1.5}, "pre_annotate_threshold"),
        ({"machine_type": "tpu"}, "machine_type"),
        ({"model": "yolo-v9"}, "model"),
        ({"execution": "slurm"}, "execution"),
    ],
)
def test_the_schema_refuses_before_a_run_exists(serialized, conf, error):
    from airflow.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match=f"param {error}:"):
        validate(serialized, conf)


def test_choices_read_as_names_never_as_null(serialized):
    for name, schema in schemas(serialized).items():
        if "enum" not in schema:
            continue
        labels = schema["values_display"]
        assert all(("null" if choice is None else choice) in labels for choice in schema["enum"]), name
        assert "null" not in {label.lower() for label in labels.values()}, name
    assert schemas(serialized)["execution"]["values_display"]["null"].startswith("Deployment default")


def test_docs_for_people(serialized):
    doc = serialized.doc_md
    for heading in ("## What it does", "## What to set", "## Trigger it from the form", "REST API", "CVAT"):
        assert heading in doc
    assert all(task.doc_md for task in serialized.tasks), [
        t.task_id for t in serialized.tasks if not t.doc_md
    ]


@pytest.fixture
def as_scheduled(monkeypatch):
    """dag.test() always creates a manual run; the scheduler creates scheduled ones. This makes
    dag.test()'s run a scheduled run, due `late` before it starts."""
    import airflow.models.dagrun as dagrun_module
    from airflow.models.dagrun import DagRun
    from airflow.utils.types import DagRunType

    late = {"by": timedelta(0)}

    def create(*, dag, run_id, run_after, session, **kwargs):
        due = run_after - late["by"]
        run = dag.create_dagrun(
            run_id=DagRun.generate_run_id(run_type=DagRunType.SCHEDULED, logical_date=None, run_after=due),
            run_type=DagRunType.SCHEDULED,
            run_after=due,
            logical_date=kwargs["logical_date"],
            data_interval=kwargs["data_interval"],
            conf=kwargs["conf"],
            state="running",
            triggered_by=kwargs["triggered_by"],
            triggering_user_name=kwargs["triggering_user_name"],
            start_date=kwargs["start_date"],
            session=session,
        )
        assert run.run_type == DagRunType.SCHEDULED
        return run

    monkeypatch.setattr(dagrun_module, "get_or_create_dagrun", create)
    return late


def test_a_scheduled_run_without_sources_skips(run_dag, as_scheduled, monkeypatch, tmp_path):
    monkeypatch.setenv("AIRFLOW_VAR_CVAT_RETRAIN", json.dumps({"root": f"file://{tmp_path}"}))
    run = run_dag(DAG_FILE.read_text(), "cvat_retrain")
    states = task_states(run)
    assert states["config"] == "skipped", states
    assert set(states.values()) == {"skipped"}
    assert str(run.state) == "success"


def test_a_late_scheduled_run_skips_even_with_sources(run_dag, as_scheduled, monkeypatch, tmp_path):
    """The catch-up run Airflow creates when the form's "Unpause" unpauses the DAG."""
    monkeypatch.setenv(
        "AIRFLOW_VAR_CVAT_RETRAIN", json.dumps({"root": f"file://{tmp_path}", "task_ids": "7"})
    )
    as_scheduled["by"] = timedelta(hours=14)
    states = task_states(run_dag(DAG_FILE.read_text(), "cvat_retrain"))
    assert states["config"] == "skipped" and states["export"] == "skipped", states


def test_a_manual_run_with_nothing_set_fails_in_config_listing_every_problem(
    run_dag, smtp_server, monkeypatch
):
    monkeypatch.delenv("AIRFLOW_VAR_CVAT_RETRAIN", raising=False)
    conf = {"arguments": "epochs=ten", "emails": ["team@example.com"]}
    run = run_dag(DAG_FILE.read_text(), "cvat_retrain", conf)
    states = task_states(run)
    assert states["config"] == "failed" and states["export"] == "upstream_failed", states
    message = smtp_server.wait(1)[-1]
    body = message.get_body(("plain", "html")).get_content()
    for problem in ("3 problems", "no artifact root", "no source to train on", "epochs"):
        assert problem in body, problem
