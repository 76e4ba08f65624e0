"""The trainer command line as the training pod runs it: resume after a kill, and bad input.

Already covered elsewhere (not repeated here): the argument-string rules (test_arguments.py);
the prepare rules in-process, including one corrupt image being skipped and listed, validation
fractions 0, 1 and -0.5 and a one-image dataset (test_trainer_prepare.py).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from demo_data.datasets import make_dataset
from tests.trainer_helpers import run_trainer, train_argv

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# Bad input: exit 2 with a JSON error, before TensorFlow is imported
# ---------------------------------------------------------------------------------------------

_IN_PROCESS = """
import json, sys
from airflow_cvat.trainer.cli import main
codes = [main(argv) for argv in json.loads(sys.argv[1])]
heavy = sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'official', 'tf_keras', 'airflow'})
print(json.dumps({"codes": codes, "heavy": heavy}))
"""


def test_bad_train_input_exits_2_with_json_before_tensorflow_loads(tmp_path):
    make_dataset(tmp_path / "ds", 4, size=64)
    out = str(tmp_path / "run")
    base = ["train", "--dataset", str(tmp_path / "ds"), "--output", out]
    cases = {
        "unknown argument(s) colour": [
            *base,
            "--model",
            "ssd-mobilenet-v2-coco",
            "--arguments",
            "colour=red",
        ],
        "epochs='lots' is not a number": [
            *base,
            "--model",
            "ssd-mobilenet-v2-coco",
            "--arguments",
            "epochs=lots",
        ],
        "at least 2 GPUs": [*base, "--model", "frcnn-nas-coco", "--arguments", "num_clones=1"],
        "valid models are": [*base, "--model", "yolo"],
        "validation fraction 0.0": [*base, "--model", "ssd-mobilenet-v2-coco", "--validation-fraction", "0"],
        "validation fraction 1.0": [*base, "--model", "ssd-mobilenet-v2-coco", "--validation-fraction", "1"],
        "no manifest.json": [
            "train",
            "--dataset",
            str(tmp_path / "missing"),
            "--output",
            out,
            "--model",
            "ssd-mobilenet-v2-coco",
        ],
        "required: --dataset": ["train", "--output", out, "--model", "ssd-mobilenet-v2-coco"],
        "invalid float value: 'a tenth'": [*base, "--model", "mask-rcnn", "--validation-fraction", "a tenth"],
        "invalid choice: 'fit'": ["fit", "--model", "ssd-mobilenet-v2-coco"],
    }
    proc = subprocess.run(
        [sys.executable, "-c", _IN_PROCESS, json.dumps(list(cases.values()))],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    lines = proc.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["heavy"] == [], "bad input must be refused before TensorFlow (or Airflow) is imported"
    assert summary["codes"] == [2] * len(cases)
    for (expected, _), line in zip(cases.items(), lines[:-1], strict=True):
        result = json.loads(line)  # every refusal is one JSON line
        assert result["status"] == "error" and expected in result["error"], (expected, result)


def _rewrite_images(folder: Path, count: int | None) -> None:
    """Replace the first ``count`` images of the export (all when None) with bytes that are no JPEG."""
    import hashlib

    from airflow_cvat.manifest import Manifest

    archive = next((folder / "archives").glob("*.zip"))
    with zipfile.ZipFile(archive) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    images = sorted(n for n in members if n.endswith(".jpg"))
    for name in images[:count]:
        members[name] = b"\xff\xd8\xff\xe0 truncated"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    manifest = Manifest.from_json((folder / "manifest.json").read_text())
    data = archive.read_bytes()
    manifest.archives[0].sha256, manifest.archives[0].size = hashlib.sha256(data).hexdigest(), len(data)
    (folder / "manifest.json").write_text(manifest.to_json())


def test_corrupt_images_through_the_cli(tmp_path):
    """The rule (prepare.py): a corrupt image is skipped and listed; above max_dropped_images: exit 2."""
    make_dataset(tmp_path / "some", 6, size=64)
    _rewrite_images(tmp_path / "some", 1)
    code, result, _ = run_trainer(
        "prepare", "--dataset", str(tmp_path / "some"), "--output", str(tmp_path / "a"),
        "--model", "ssd-mobilenet-v2-coco", "--arguments", "max_dropped_images=0.2", timeout=180,
    )  # fmt: skip
    assert code == 0 and result["train_images"] + result["validation_images"] == 5
    assert len(result["skipped_images"]) == 1 and "cannot decode" in result["skipped_images"][0]["reason"]

    make_dataset(tmp_path / "all", 4, size=64)
    _rewrite_images(tmp_path / "all", None)
    code, result, _ = run_trainer(
        "prepare", "--dataset", str(tmp_path / "all"), "--output", str(tmp_path / "b"), timeout=180
    )
    assert code == 2 and result["status"] == "error"
    assert "4 do not decode" in result["error"] and "max_dropped_images" in result["error"]


def test_too_few_images_for_a_validation_split(tmp_path):
    make_dataset(tmp_path / "ds", 1, size=64)
    code, result, _ = run_trainer(
        "train",
        "--dataset",
        str(tmp_path / "ds"),
        "--output",
        str(tmp_path / "run"),
        "--model",
        "ssd-mobilenet-v2-coco",
        "--arguments",
        "epochs=1;input_size=64",
        timeout=180,
    )
    assert code == 2 and "at least 2 are needed" in result["error"]


# ---------------------------------------------------------------------------------------------
# Resume
# ---------------------------------------------------------------------------------------------

STEPS, EVERY = 60, 10
RESUME_ARGUMENTS = f"epochs={STEPS};batch_size=2;input_size=64;checkpoint_steps={EVERY}"
_STEP_LINE = re.compile(rf"step (\d+)/{STEPS} loss")


def _train_command(dataset: Path, output: Path) -> list[str]:
    return train_argv(dataset, output, "ssd-mobilenet-v2-coco", RESUME_ARGUMENTS)


def _latest_step(checkpoints: Path) -> int:
    state = (checkpoints / "checkpoint").read_text()
    return int(re.search(r'^model_checkpoint_path: "ckpt-(\d+)"', state, re.M).group(1))


@pytest.mark.slow  # five TensorFlow processes, two of them training
@pytest.mark.timeout(600)
def test_killed_run_resumes_from_its_checkpoint_and_a_finished_run_skips(tmp_path):
    pytest.importorskip("tensorflow")
    dataset = make_dataset(tmp_path / "ds", 16, size=64)
    output = tmp_path / "run"
    checkpoints = output / "checkpoints"

    # 1. Start a run and SIGKILL it (no clean-up possible) as soon as its first checkpoint exists.
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(
        [sys.executable, "-m", "airflow_cvat.trainer", *_train_command(dataset, output)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    deadline = time.monotonic() + 300
    while not (checkpoints / "checkpoint").exists():
        assert first.poll() is None, (
            f"the run ended before its first checkpoint:\n{(tmp_path / 'first.log').read_text()[-3000:]}"
        )
        assert time.monotonic() < deadline, "no checkpoint after 300 s"
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    log.close()
    killed_at = _latest_step(checkpoints)
    assert EVERY <= killed_at < STEPS, f"killed at step {killed_at}: raise STEPS so the kill lands mid-run"
    assert not (checkpoints / "train.json").exists() and not (output / "result.json").exists()

    # 2. The same command again: continues from that checkpoint and finishes the requested steps.
    code, result, stderr = run_trainer(*_train_command(dataset, output))
    assert code == 0, stderr[-4000:]
    assert "prepare: already complete" in stderr
    assert re.search(rf"resuming from \S*ckpt-{killed_at}\b", stderr), stderr[-3000:]
    steps = [int(s) for s in _STEP_LINE.findall(stderr)]
    assert steps and min(steps) > killed_at and steps[-1] == STEPS, steps  # no step was trained twice
    assert result["steps"] == STEPS and _latest_step(checkpoints) == STEPS
    assert result["export_check"]["outputs"]
    # what training really used: the split and every drop (none here), in the result and the log
    assert result["prepared"]["images"] == {"selected": 16, "train": 14, "validation": 2, "test": 0}
    assert result["prepared"]["split"]["mode"] == "random" and "dropped images: 0" in stderr
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["step"] == STEPS

    # 3. A finished run re-run (a retried pod after success): nothing is trained, evaluated or exported again.
    code, again, stderr = run_trainer(*_train_command(dataset, output))
    assert code == 0, stderr[-4000:]
    assert f"train: {STEPS} steps already done" in stderr
    assert not _STEP_LINE.search(stderr) and "evaluation at step" not in stderr
    assert again["steps"] == STEPS and again["export_check"] is None
    assert again["metrics"] == result["metrics"]

    # 4. evaluate and export alone, on the finished run: the model and arguments come from its run record.
    code, evaluated, stderr = run_trainer("evaluate", "--output", output.as_uri())
    assert code == 0, stderr[-4000:]
    assert evaluated["model"] == "ssd-mobilenet-v2-coco"
    assert evaluated["metrics"]["AP50"] == pytest.approx(result["metrics"]["AP50"], abs=1e-6)
    code, exported, stderr = run_trainer("export", "--output", output.as_uri())
    assert code == 0, stderr[-4000:]
    assert exported["check"]["outputs"] and (output / "saved_model" / "saved_model.pb").exists()
