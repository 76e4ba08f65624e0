"""What the transfer and real-data benchmarks share: the trainer's command line, and a trained
run turned into a base checkpoint.

Why the command line: the benchmarks should measure what a user's run does (prepare, train,
evaluate, export), not a shortcut through the trainer's internals.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def trainer(*argv: str, timeout: float = 7200) -> dict:
    """Run ``python -m airflow_cvat.trainer ARGV`` and return its JSON result (the last stdout line)."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "airflow_cvat.trainer", *argv],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result.get("status") != "ok":
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"trainer {argv[0]} failed: {result.get('error')}")
    result["wall_s"] = round(time.monotonic() - started, 1)
    return result


def train(dataset: Path, output: Path, model: str, arguments: str, base: str | None = None) -> dict:
    argv = ["train", "--dataset", dataset.as_uri(), "--output", output.as_uri(), "--model", model,
            "--arguments", arguments]  # fmt: skip
    if base:
        argv += ["--base-checkpoint", base]
    return trainer(*argv)


def random_base(model: str, folder: Path) -> str:
    """The offline random starting point (``init-base``): what "from random weights" means here."""
    trainer("init-base", "--model", model, "--output", folder.as_uri())
    return folder.as_uri()


def base_from_run(run: Path, model: str, arguments: str, num_classes: int, folder: Path) -> str:
    """A trained run's backbone and decoder, saved in the base-checkpoint form ``init-base`` writes.

    Runs in a subprocess so that this process never loads TensorFlow.
    """
    script = f"""
import tensorflow as tf
from airflow_cvat.arguments import parse_arguments
from airflow_cvat.catalog import load_catalog
from airflow_cvat.trainer import families
spec = load_catalog()[{model!r}]
args = parse_arguments({model!r}, {arguments!r})
config = families.build_config(spec, args, {num_classes}, families.DataPaths("unused", "unused"))
model = families.build_task(config).build_model()
latest = tf.train.latest_checkpoint({str(run / "checkpoints")!r})
tf.train.Checkpoint(model=model).restore(latest).expect_partial()
tf.train.Checkpoint(backbone=model.backbone, decoder=model.decoder).save({str(folder / "ckpt")!r})
"""
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True, capture_output=True, timeout=900)
    return folder.as_uri()
