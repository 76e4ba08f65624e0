"""The argument string: parsing, defaults, the seed's rule, and every way it can be wrong."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from airflow_cvat.arguments import ArgumentError, parse_arguments, split_arguments


def test_seed_string_parses():
    args = parse_arguments(
        "ssd-mobilenet-v2-coco", "epochs=100;batch_size=24;initial_learning_rate=0.004;num_clones=4"
    )
    assert (args.steps, args.batch_size, args.initial_learning_rate, args.num_clones) == (100, 24, 0.004, 4)
    assert args.per_replica_batch_size == 6
    assert args.steps_source == "given"
    assert args.to_dict()["epochs"] == 100


def test_defaults_come_from_the_catalogue():
    args = parse_arguments("frcnn-res50-coco", "")
    assert (args.steps, args.batch_size, args.initial_learning_rate, args.num_clones) == (10000, 1, 0.0003, 1)
    assert args.steps_source == "default"


def test_seed_rule_sizes_steps_from_image_count():
    assert parse_arguments("ssd-mobilenet-v2-coco", "batch_size=24", num_images=240).steps == 10 * 1000
    assert parse_arguments("frcnn-res50-coco", None, num_images=30).steps == 30 * 500
    args = parse_arguments("ssd-mobilenet-v2-coco", "epochs=7", num_images=240)
    assert args.steps == 7 and args.steps_source == "given"


def test_spacing_case_and_seed_spellings():
    args = parse_arguments(
        "mask-rcnn", " Stage-1-Epochs = 2 ; stage2_epochs=0;stage_3_epochs=1 ;", num_images=10
    )
    assert args.stage_epochs == (2, 0, 1)
    assert args.stage_steps == (20, 0, 10)
    assert args.steps == 30
    assert split_arguments("lr=0.1") == {"initial_learning_rate": "0.1"}


def test_mask_rcnn_defaults_three_stages():
    args = parse_arguments("mask-rcnn", "batch_size=2", num_images=8)
    assert args.stage_epochs == (1, 2, 3)
    assert args.stage_steps == (4, 8, 12)


@pytest.mark.parametrize(
    "model, text, message",
    [
        ("ssd-mobilenet-v2-coco", "epochs", "not key=value"),
        ("ssd-mobilenet-v2-coco", "=3", "both a key and a value"),
        ("ssd-mobilenet-v2-coco", "epochs=", "both a key and a value"),
        ("ssd-mobilenet-v2-coco", "epochs=1;epochs=2", "given twice"),
        ("ssd-mobilenet-v2-coco", "colour=red", "valid arguments: epochs, batch_size"),
        ("ssd-mobilenet-v2-coco", "stage1_epochs=1", "unknown argument"),
        ("mask-rcnn", "epochs=100", "stage1_epochs"),
        ("ssd-mobilenet-v2-coco", "epochs=many", "not a number"),
        ("ssd-mobilenet-v2-coco", "epochs=1.5", "whole number"),
        ("ssd-mobilenet-v2-coco", "epochs=0", "at least 1"),
        ("ssd-mobilenet-v2-coco", "epochs=-5", "at least 1"),
        ("ssd-mobilenet-v2-coco", "epochs=inf", "whole number"),
        ("ssd-mobilenet-v2-coco", "batch_size=0", "at least 1"),
        ("ssd-mobilenet-v2-coco", "initial_learning_rate=0", "above 0"),
        ("ssd-mobilenet-v2-coco", "initial_learning_rate=nan", "above 0"),
        ("ssd-mobilenet-v2-coco", "initial_learning_rate=fast", "not a number"),
        ("ssd-mobilenet-v2-coco", "num_clones=0", "at least 1"),
        ("ssd-mobilenet-v2-coco", "num_clones=1000", "at most 64"),
        ("ssd-mobilenet-v2-coco", "input_size=96", "multiple of 64"),
        ("ssd-mobilenet-v2-coco", "input_size=16", "at least 64"),
        ("ssd-mobilenet-v2-coco", "input_size=4096", "at most 2048"),
        ("ssd-mobilenet-v2-coco", "checkpoint_steps=0", "at least 1"),
        ("ssd-mobilenet-v2-coco", "batch_size=3;num_clones=2", "multiple of 2"),
        ("frcnn-nas-coco", "", "at least 2 GPUs"),
        ("frcnn-nas-coco", "num_clones=1", "at least 2 GPUs"),
        ("mask-rcnn", "stage1_epochs=0;stage2_epochs=0;stage3_epochs=0", "above 0"),
        ("mask-rcnn", "stage1_epochs=-1", "at least 0"),
        ("yolo-v9", "", "valid models are"),
    ],
)
def test_bad_arguments_are_refused_with_what_is_valid(model, text, message):
    with pytest.raises(ArgumentError, match=message):
        parse_arguments(model, text)


def test_nas_with_two_gpus_is_fine():
    assert parse_arguments("frcnn-nas-coco", "num_clones=2;batch_size=2").num_clones == 2


def test_no_training_images():
    with pytest.raises(ArgumentError, match="no training images"):
        parse_arguments("ssd-mobilenet-v2-coco", "", num_images=0)


def test_user_catalogue_is_used(tmp_path):
    from airflow_cvat.catalog import load_catalog

    path = tmp_path / "c.json"
    path.write_text(
        json.dumps([{"name": "mine", "family": "retinanet", "backbone": "resnet50", "epochs": 77}])
    )
    assert parse_arguments("mine", "", catalog=load_catalog(path)).steps == 77


def _validate(*args: str) -> tuple[int, dict]:
    proc = subprocess.run(
        [sys.executable, "-m", "airflow_cvat.trainer", "validate", *args], capture_output=True, text=True
    )
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1])


def test_validate_subcommand_exits_0_or_2():
    """TensorFlow stays unloaded here: tests/test_trainer_isolation.py."""
    code, result = _validate("--model", "ssd-mobilenet-v2-coco", "--arguments", "epochs=10;batch_size=4")
    assert code == 0 and result["status"] == "ok" and result["arguments"]["steps"] == 10
    code, result = _validate("--model", "frcnn-nas-coco", "--arguments", "num_clones=1")
    assert code == 2 and result["status"] == "error" and "at least 2 GPUs" in result["error"]
    code, result = _validate("--model", "nope")
    assert code == 2 and "valid models are" in result["error"]
