"""A run's configuration is refused, with a reason, before any expensive work starts."""

from __future__ import annotations

import pytest

from airflow_cvat.retrain_config import ConfigError, resolve

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
    ("conf", "message"),
    [
        ({"task_ids": [1], "arguments": "epohcs=10"}, "epohcs"),
        ({"task_ids": [1], "arguments": "epochs=ten"}, "epochs"),
        ({"task_ids": [1], "model": "yolo-v9"}, "ssd-mobilenet-v2-coco"),
        ({"task_ids": [1], "model": "frcnn-nas-coco"}, "2"),
        ({"task_ids": [1], "num_clones": 2, "arguments": "num_clones=4"}, "give it once"),
        ({"task_ids": [1], "project_id": 2}, "exactly one source"),
        ({}, "exactly one source"),
        ({"task_ids": ["x"]}, "task_ids must be"),
        ({"task_ids": [1], "emails": ["not-an-address"]}, "not email addresses"),
        ({"task_ids": [1], "execution": "slurm"}, "execution must be one of"),
        ({"task_ids": [1], "epochs": 5}, "unknown conf keys ['epochs']"),
        ({"task_ids": [1], "execution": "kubernetes", "machine_type": "gpu-1", "num_clones": 4}, "gpu-4"),
        ({"task_ids": [1], "execution": "kubernetes", "machine_type": "tpu"}, "unknown machine type"),
    ],
)
def test_bad_conf_is_refused_with_what_to_do(conf, message):
    with pytest.raises(ConfigError, match=None) as caught:
        resolve(conf, DEFAULTS)
    assert message in str(caught.value)


def test_kubernetes_picks_the_smallest_machine_with_enough_gpus():
    config = resolve({"task_ids": [1], "execution": "kubernetes", "num_clones": 2}, DEFAULTS)
    assert config.machine_type == "gpu-2" and config.training["num_clones"] == 2


def test_missing_root_is_explained():
    with pytest.raises(ConfigError, match="cvat_retrain Variable"):
        resolve({"task_ids": [1]}, {})


def test_a_run_naming_its_source_replaces_the_nightly_source():
    config = resolve({"project_id": 7, "task_ids": []}, DEFAULTS | {"task_ids": [5]})
    assert config.project_id == 7 and config.task_ids == []
