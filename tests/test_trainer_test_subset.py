"""The Test subset: kept out of training, evaluated apart after it, reported beside Validation.

One TensorFlow process: the trainer's ``main`` is called twice in it, a tiny training run (a few
steps at 64 px) and the same command again, which must redo no evaluation. A CVAT project
export (COCO 1.0) with Train, Validation and Test subsets, as ``demo_data.synthetic`` writes
it (``annotations/instances_<subset>.json``, ``images/<subset>/``).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_cvat.deploy.card import card_json, card_markdown
from airflow_cvat.manifest import MANIFEST_NAME, Archive, Label, Manifest, fingerprint
from demo_data.synthetic import DEFAULT_LABELS, generate_frames, write_export

ROOT = Path(__file__).resolve().parents[1]
SUBSETS = {"Train": 8, "Validation": 2, "Test": 3}
ARGUMENTS = "epochs=4;batch_size=2;input_size=64;eval_steps=0;checkpoint_steps=4"

# The trainer's main twice in one process (a run, then the same command: a retried pod), then
# the file names of each split's TFRecords, read with the TensorFlow the trainer already loaded.
_TWICE = """
import json, sys
from airflow_cvat.trainer.cli import main
argv, data = json.loads(sys.argv[1]), sys.argv[2]
codes = [main(argv), main(argv)]
import tensorflow as tf
names = {}
for prefix in ("train", "val", "test"):
    files = sorted(tf.io.gfile.glob(f"{data}/{prefix}-*.tfrecord"))
    names[prefix] = sorted(
        tf.train.Example.FromString(raw.numpy()).features.feature["image/filename"].bytes_list.value[0].decode()
        for raw in tf.data.TFRecordDataset(files)
    )
print(json.dumps({"codes": codes, "records": names}))
"""


def _subset_export(folder: Path) -> tuple[Path, dict[str, list[str]], set[str]]:
    """A project export with the three subsets: the dataset folder, each subset's names, Test's labels."""
    frames, names, start = [], {}, 0
    for subset, count in SUBSETS.items():
        chosen = list(generate_frames(count, width=64, height=64, start=start, max_objects=2))
        for frame in chosen:
            frame.subset = subset
        frames += chosen
        names[subset] = [frame.name for frame in chosen]
        start += count
    relative = "archives/project-1.zip"
    (folder / "archives").mkdir(parents=True)
    with open(folder / relative, "wb") as handle:
        write_export(frames, DEFAULT_LABELS, handle, project=True)
    data = (folder / relative).read_bytes()
    archive = Archive(
        relative,
        "COCO 1.0",
        len(data),
        hashlib.sha256(data).hexdigest(),
        frame_names=[f.name for f in frames],
    )
    manifest = Manifest(
        source={"server": "synthetic", "project_id": 1},
        format="COCO 1.0",
        archives=[archive],
        labels=[Label(id=10 + i, name=name) for i, name in enumerate(DEFAULT_LABELS)],
        label_counts={},
        images=len(frames),
        fingerprint=fingerprint({"zip": hashlib.sha256(data).hexdigest()}),
    )
    (folder / MANIFEST_NAME).write_text(manifest.to_json())
    test_labels = {shape.label for frame in frames if frame.subset == "Test" for shape in frame.shapes}
    return folder, names, test_labels


@pytest.mark.timeout(600)
def test_test_subset_is_kept_out_of_training_and_evaluated_apart(tmp_path):
    pytest.importorskip("official")  # the training extra; checked without importing TensorFlow here
    dataset, names, test_labels = _subset_export(tmp_path / "ds")
    output = tmp_path / "run"
    # Export is tested elsewhere (test_trainer_cli.py); its completion markers, laid down first,
    # make the run skip it, so this test pays only for training and the two evaluations.
    (output / "saved_model").mkdir(parents=True)
    (output / "saved_model" / "saved_model.pb").write_bytes(b"")
    (output / "classes.csv").write_text("")
    argv = ["train", "--dataset", str(dataset), "--output", str(output)]
    argv += ["--model", "ssd-mobilenet-v2-coco", "--arguments", ARGUMENTS]
    proc = subprocess.run(
        [sys.executable, "-c", _TWICE, json.dumps(argv), str(output / "data")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=540,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    lines = proc.stdout.strip().splitlines()
    assert lines and json.loads(lines[-1])["codes"] == [0, 0], proc.stderr[-4000:]
    records = json.loads(lines[-1])["records"]
    first, again = json.loads(lines[-3]), json.loads(lines[-2])

    # Test is written apart and never trained on: none of its images are in the training records.
    assert records["test"] == sorted(names["Test"]) and records["val"] == sorted(names["Validation"])
    assert records["train"] == sorted(names["Train"]) and not set(records["train"]) & set(names["Test"])
    assert first["prepared"]["images"]["test"] == SUBSETS["Test"]

    # Evaluated apart, on exactly the Test images, by the final model; recorded in metrics.json.
    metrics = json.loads((output / "metrics.json").read_text())
    test = metrics["test"]
    assert test["images"] == SUBSETS["Test"] and test["step"] == metrics["step"] == 4
    assert {"AP", "AP50", "AP75", "per_class"} <= test.keys()
    classes = [
        label["name"] for label in json.loads((output / "data" / "prepare.json").read_text())["labels"]
    ]
    assert sorted(test["per_class"]) == sorted(classes) and "mask_AP" not in test  # RetinaNet: no masks
    # the ground truth is Test's: exactly its classes have an AP (COCO has none without instances)
    assert {name for name, ap in test["per_class"].items() if ap["AP50"] is not None} == test_labels
    assert test_labels != set(classes)  # so the line above tells Test's ground truth from another's
    assert first["metrics"]["test"] == test  # the result carries it, beside Validation's own numbers
    assert first["metrics"]["AP50"] == metrics["AP50"]
    print("Test subset AP50", test["AP50"], "AP", test["AP"], "validation AP50", metrics["AP50"])

    # A finished run again: neither evaluation is redone, and the result is the same.
    second_run = proc.stderr.split("train: 4 steps already done", 1)
    assert len(second_run) == 2, proc.stderr[-3000:]
    assert proc.stderr.count("test evaluation at step") == 1 and "evaluation at step" not in second_run[1]
    assert again["metrics"] == first["metrics"]

    # The model card says it (JSON and Markdown), and that the gate reads Validation.
    given = dict(
        model_name="shapes", version="v1", created="now", run_uri=str(output), result=first, labels=[],
        data=None, base_model={}, tflite={}, files=[],
    )  # fmt: skip
    card = card_json(**given, metrics=metrics)
    assert card["test"]["images"] == SUBSETS["Test"] and card["test"]["AP50"] == test["AP50"]
    assert card["test"]["line"].startswith(f"Test subset ({SUBSETS['Test']} images, never trained on): AP50 ")
    markdown = card_markdown(card)
    assert card["test"]["line"] in markdown and "quality gate reads the validation AP50" in markdown
    without = card_json(**given, metrics={k: v for k, v in metrics.items() if k != "test"})
    assert without["test"] is None and "Test subset" not in card_markdown(without)
