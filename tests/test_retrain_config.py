"""A run's configuration is refused, with every reason at once, before any expensive work starts."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import jsonschema
import pytest

from airflow_cvat.arguments import ARGUMENTS_PATTERN, ArgumentError, split_arguments
from airflow_cvat.coercion import IDS_PATTERN
from airflow_cvat.retrain_config import (
    ConfigError,
    has_source,
    parse_ids,
    resolve,
    scheduled_skip_reason,
)

DEFAULTS = {"root": "file:///data/cvat", "model": "ssd-mobilenet-v2-coco", "execution": "local"}


def test_conf_overrides_deployment_defaults_and_fills_training_arguments():
    config = resolve({"task_ids": [3, 1], "arguments": "epochs=50;batch_size=8"}, DEFAULTS)
    assert config.task_ids == [3, 1] and config.source_key == "tasks-1-3"
    assert config.training["steps"] == 50 and config.training["batch_size"] == 8
    assert config.arguments == "epochs=50;batch_size=8;num_clones=1"


def test_nightly_run_takes_the_deployment_sources():
    config = resolve({}, DEFAULTS | {"project_id": 4})
    assert config.project_id == 4 and config.source_key == "project-4"


@pytest.mark.parametrize(
    "given",
    ["12, 13", "12 13", "12\n13", " 12,\n 13, ", "[12, 13]", [12, 13], ["12", "13"], ["12", 13]],
)
def test_ids_are_accepted_however_they_come(given):
    """The form sends text, REST and the webhook bridge send lists: all mean the same tasks."""
    assert parse_ids(given) == [12, 13]
    assert resolve({"task_ids": given}, DEFAULTS).task_ids == [12, 13]


@pytest.mark.parametrize("given", [12, "12", ["12"], [12]])
def test_one_id_in_any_form(given):
    assert parse_ids(given) == [12]


@pytest.mark.parametrize("given", [None, "", "  ", []])
def test_no_ids(given):
    assert parse_ids(given) == []


@pytest.mark.parametrize("given", ["12;13", "twelve", "12, x", [1.5], [0], -3, [True], "12-13"])
def test_bad_ids_name_the_field_and_the_format(given):
    with pytest.raises(ConfigError, match=r"task_ids must be CVAT ids .* e\.g\. 12, 13"):
        parse_ids(given, "task_ids")


@pytest.mark.parametrize("text", ["12, 13", "12\n13", "12", " 12 13 ", "[12, 13]", ""])
def test_the_forms_id_pattern_takes_what_config_takes(text):
    assert re.search(IDS_PATTERN, text)
    parse_ids(text)


@pytest.mark.parametrize("text", ["12;13", "twelve", "12, x", "12-13", "#12"])
def test_the_forms_id_pattern_refuses_what_config_refuses(text):
    assert not re.search(IDS_PATTERN, text)
    with pytest.raises(ConfigError):
        parse_ids(text)


@pytest.mark.parametrize(
    "text",
    ["", "epochs=100", "epochs=100;batch_size=24;", " epochs = 100 ; lr=1e-4 ", "epochs=1\nbatch_size=2",
     "stage-1-epochs=2;stage2_epochs=0"],
)  # fmt: skip
def test_the_forms_arguments_pattern_takes_well_formed_strings(text):
    assert jsonschema.Draft202012Validator({"pattern": ARGUMENTS_PATTERN}).is_valid(text)
    split_arguments(text)


@pytest.mark.parametrize("text", ["epochs", "epochs=", "=3", "epochs=1 batch_size=2", "a=b=c", "epochs:100"])
def test_the_forms_arguments_pattern_refuses_malformed_strings(text):
    """What the form refuses, config would refuse too: the pattern is not stricter than needed
    for these, and the shape is checked before a run exists."""
    assert not jsonschema.Draft202012Validator({"pattern": ARGUMENTS_PATTERN}).is_valid(text)
    with pytest.raises((ArgumentError, ConfigError)):
        split_arguments(text)
        resolve({"task_ids": [1], "arguments": text}, DEFAULTS)


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({"task_ids": [1], "arguments": "epohcs=10"}, "epohcs"),
        ({"task_ids": [1], "arguments": "epochs=ten"}, "epochs"),
        ({"task_ids": [1], "model": "yolo-v9"}, "ssd-mobilenet-v2-coco"),
        ({"task_ids": [1], "model": "frcnn-nas-coco"}, "2"),
        ({"task_ids": [1], "num_clones": 2, "arguments": "num_clones=4"}, "give it once"),
        ({"task_ids": [1], "project_id": 2}, "exactly one source"),
        ({}, "no source to train on"),
        ({"task_ids": ["x"]}, "task_ids must be"),
        ({"task_ids": [1], "emails": ["not-an-address"]}, "not email addresses"),
        ({"task_ids": [1], "execution": "slurm"}, "execution must be one of"),
        ({"task_ids": [1], "epochs": 5}, "unknown conf keys ['epochs']"),
        ({"task_ids": [1], "execution": "kubernetes", "machine_type": "gpu-1", "num_clones": 4}, "gpu-4"),
        ({"task_ids": [1], "execution": "kubernetes", "machine_type": "tpu"}, "unknown machine type"),
        ({"source_uri": "s3://b/x.zip", "pre_annotate": True}, "give pre_annotate_task_ids"),
        ({"task_ids": [1], "pre_annotate_threshold": 2}, "within 0..1"),
    ],
)
def test_bad_conf_is_refused_with_what_to_do(conf, message):
    with pytest.raises(ConfigError) as caught:
        resolve(conf, DEFAULTS)
    assert message in str(caught.value)


def test_every_problem_is_reported_in_one_message():
    """A first run with nothing right learns everything at once, not one failed run at a time."""
    conf = {
        "arguments": "epochs=ten",
        "model": "yolo-v9",
        "execution": "kubernetes",
        "machine_type": "tpu",
        "emails": ["nobody"],
        "typo": 1,
    }
    with pytest.raises(ConfigError) as caught:
        resolve(conf, {})
    message = str(caught.value)
    assert message.startswith("cannot start this run, 6 problems")
    for expected in (
        "unknown conf keys ['typo']",
        "no artifact root: set 'root' in the cvat_retrain Variable",
        "not email addresses: ['nobody']",
        "no source to train on: give task_ids",
        "unknown model 'yolo-v9'; valid models are: ",
        "unknown machine type 'tpu'; known types: ",
    ):
        assert expected in message
    assert len(re.findall(r"^  \d+\. ", message, flags=re.M)) == 6


def test_arguments_and_machine_type_are_both_reported_for_a_known_model():
    conf = {"task_ids": "5", "arguments": "epohcs=10", "execution": "kubernetes", "machine_type": "tpu"}
    with pytest.raises(ConfigError) as caught:
        resolve(conf, DEFAULTS)
    assert "epohcs" in str(caught.value) and "unknown machine type 'tpu'" in str(caught.value)


def test_execution_default_means_the_deployments_choice():
    assert (
        resolve({"task_ids": "1", "execution": "default"}, DEFAULTS | {"execution": "local"}).execution
        == "local"
    )
    assert resolve({"task_ids": "1", "execution": None}, DEFAULTS).execution == "local"


def test_kubernetes_picks_the_smallest_machine_with_enough_gpus():
    config = resolve({"task_ids": [1], "execution": "kubernetes", "num_clones": 2}, DEFAULTS)
    assert config.machine_type == "gpu-2" and config.training["num_clones"] == 2


def test_the_plan_carries_what_training_runs_with_merged_and_chosen_once():
    """num_clones from the form goes into the arguments under one rule; the machine is chosen here,
    and the training task reads all of it from training_plan (it parses nothing again)."""
    plan = resolve({"task_ids": [1], "execution": "kubernetes", "num_clones": 2}, DEFAULTS).to_dict()
    training = plan["training_plan"]
    assert training["arguments"] == "num_clones=2" and training["num_clones"] == 2
    assert training["machine"]["name"] == plan["machine_type"] == "gpu-2" and training["machine"]["gpus"] == 2
    assert training["training"] == plan["training"]
    assert resolve({"task_ids": [1]}, DEFAULTS).to_dict()["training_plan"]["machine"] is None
    # The form's default 1 leaves the string's count alone; any other value must agree with it.
    assert resolve({"task_ids": [1], "arguments": "num_clones=4;batch_size=24"}, DEFAULTS).num_clones == 4
    with pytest.raises(ConfigError, match="num_clones=2 conflicts with num_clones=4 in the arguments"):
        resolve({"task_ids": [1], "num_clones": 2, "arguments": "num_clones=4"}, DEFAULTS)


def test_one_layout_names_the_run_folders():
    """The export's dataset folder and the run folder use the same safe form of the run id."""
    from airflow_cvat.layout import dataset_uri, run_uri, safe_run_id

    run_id = "manual__2026-12-04T10:00:00+00:00"
    assert safe_run_id(run_id) == "manual__2026-12-04T10_00_00_00_00"
    assert (
        dataset_uri("s3://b/cvat/", "tasks-1", run_id)
        == f"s3://b/cvat/datasets/tasks-1/{safe_run_id(run_id)}"
    )
    assert run_uri("s3://b/cvat", run_id) == f"s3://b/cvat/runs/{safe_run_id(run_id)}"


def test_missing_root_is_explained():
    with pytest.raises(ConfigError, match="cvat_retrain Variable"):
        resolve({"task_ids": [1]}, {})


def test_a_run_naming_its_source_replaces_the_nightly_source():
    config = resolve({"project_id": 7, "task_ids": []}, DEFAULTS | {"task_ids": [5]})
    assert config.project_id == 7 and config.task_ids == []
    config = resolve({"task_ids": "8, 9", "project_id": None}, DEFAULTS | {"project_id": 5})
    assert config.task_ids == [8, 9] and config.project_id is None


@pytest.mark.parametrize(
    ("conf", "settings", "expected"),
    [
        ({}, {}, False),
        ({"task_ids": None, "project_id": None, "source_uri": ""}, {"root": "s3://b"}, False),
        ({}, {"task_ids": "12"}, True),
        ({}, {"project_id": 4}, True),
        ({"task_ids": "12, 13"}, {}, True),
    ],
)
def test_has_source_decides_whether_a_scheduled_run_has_work(conf, settings, expected):
    assert has_source(conf, settings) is expected


def test_a_scheduled_run_without_source_is_told_what_to_set():
    now = datetime(2026, 1, 2, 2, 0, 5, tzinfo=UTC)
    reason = scheduled_skip_reason({}, {"root": "s3://b"}, due=now, started=now)
    assert reason and "cvat_retrain Variable" in reason and "task_ids" in reason and "project_id" in reason


def test_a_scheduled_run_starting_hours_late_is_the_unpause_catch_up_and_skips():
    due = datetime(2026, 1, 2, 2, 0, tzinfo=UTC)
    on_time = scheduled_skip_reason({}, {"project_id": 4}, due=due, started=due + timedelta(minutes=20))
    late = scheduled_skip_reason({}, {"project_id": 4}, due=due, started=due + timedelta(hours=14))
    assert on_time is None
    assert late and "14.0 h after it was due" in late and "unpaused" in late
