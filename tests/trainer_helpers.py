"""Shared helpers of the trainer tests: run the trainer CLI in a subprocess, read its JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def train_argv(dataset: Path, output: Path, model: str, arguments: str, *more: str) -> list[str]:
    """The trainer's ``train`` command line on a local dataset and output folder."""
    return ["train", "--dataset", dataset.as_uri(), "--output", output.as_uri(), "--model", model,
            "--arguments", arguments, *more]  # fmt: skip


def run_trainer(
    *args: str, timeout: float = 600, env: dict | None = None, cwd: Path = REPO
) -> tuple[int, dict, str]:
    """(exit code, last-line JSON, stderr) of ``python -m airflow_cvat.trainer ARGS``."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "airflow_cvat.trainer", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
    )
    lines = proc.stdout.strip().splitlines()
    assert lines, f"no stdout; stderr:\n{proc.stderr[-4000:]}"
    return proc.returncode, json.loads(lines[-1]), proc.stderr
