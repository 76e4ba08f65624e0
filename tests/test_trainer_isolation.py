"""The trainer side never imports Airflow (the training image does not even install it).

Each check runs in a fresh interpreter, since this test process may have imported Airflow.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import airflow_cvat.trainer

ROOT = Path(__file__).resolve().parents[1]
TRAINER_MODULES = sorted(
    f"airflow_cvat.trainer.{m.name}" for m in pkgutil.iter_modules(airflow_cvat.trainer.__path__)
)
LIGHT = [  # the trainer modules that load without TensorFlow, and what they share with Airflow
    "airflow_cvat.trainer",
    "airflow_cvat.trainer.__main__",
    "airflow_cvat.trainer.cli",
    "airflow_cvat.trainer.prepare",
    "airflow_cvat.trainer.storage",
    "airflow_cvat.trainer.fixtures",
    "airflow_cvat.catalog",
    "airflow_cvat.arguments",
    "airflow_cvat.manifest",
    "airflow_cvat.synthetic",
]


def _loaded_after_importing(modules: list[str]) -> set[str]:
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_light_trainer_modules_import_neither_airflow_nor_tensorflow():
    loaded = _loaded_after_importing(LIGHT)
    assert "airflow" not in loaded
    assert not loaded & {"tensorflow", "official", "tf_keras"}, (
        "the CLI must answer bad input before TF loads"
    )


def test_no_trainer_module_imports_airflow():
    pytest.importorskip("tensorflow")
    assert {"cli", "train", "evaluate", "export", "prepare"} <= {m.rsplit(".", 1)[1] for m in TRAINER_MODULES}
    loaded = _loaded_after_importing(TRAINER_MODULES)
    assert "tensorflow" in loaded and "official" in loaded  # the heavy modules really were imported
    assert "airflow" not in loaded
