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
    "airflow_cvat.trainer.preannotate",
    "airflow_cvat.catalog",
    "airflow_cvat.arguments",
    "airflow_cvat.manifest",
    "demo_data.synthetic",  # the generated data the trainer tests and benchmarks feed it
    "demo_data.datasets",
]
SHARED_CONTRACTS = [  # owned once, read by both worlds: the standard library only
    "airflow_cvat.envelope",
    "airflow_cvat.preannotation_request",
    "airflow_cvat.cvat_policy",
    "airflow_cvat.layout",
    "airflow_cvat.coercion",
    "airflow_cvat.training_plan",
    "airflow_cvat.retrain_config",
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


def test_shared_contract_modules_need_only_the_standard_library():
    at_start = _loaded_after_importing([])  # what site start-up loads (e.g. an editable install's finder)
    loaded = _loaded_after_importing(SHARED_CONTRACTS) - at_start
    third_party = loaded - set(sys.stdlib_module_names) - {"airflow_cvat"}
    assert not third_party, f"shared contracts must be standard library only, loaded {sorted(third_party)}"


def test_no_trainer_module_imports_airflow():
    pytest.importorskip("tensorflow")
    assert {"cli", "train", "evaluate", "export", "prepare"} <= {m.rsplit(".", 1)[1] for m in TRAINER_MODULES}
    loaded = _loaded_after_importing(TRAINER_MODULES)
    assert "tensorflow" in loaded and "official" in loaded  # the heavy modules really were imported
    assert "airflow" not in loaded
