"""Shared fixtures: an isolated Airflow (SQLite metadata DB), real servers on loopback.

Airflow reads its configuration at import time, so the environment is set here, before any test
module imports Airflow.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="airflow-cvat-tests-"))
os.environ["AIRFLOW_HOME"] = str(_AIRFLOW_HOME)
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_AIRFLOW_HOME}/airflow.db"
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(_AIRFLOW_HOME / "dags")
os.environ.setdefault("AIRFLOW__CORE__EXECUTOR", "LocalExecutor")

pytest_plugins = [
    "tests.fixtures.airflow",
    "tests.fixtures.servers",
    "tests.fixtures.training",
    "tests.fixtures.publish",
    "tests.fixtures.webhooks",
    "tests.fixtures.airflow_servers",
]

# ---- order and parallel workers --------------------------------------------------------------

SLOW_FIXTURES = {"ssd_run", "trained_run"}
"""A test that uses one of these waits for a real training run: it is slow too."""

MODULE_GROUPS = {"test_ui_browser.py", "test_pretrained.py"}
"""Modules whose module-scoped fixtures are expensive (a whole Airflow stack; published checkpoints
made with the Model Garden's classes): their tests share one worker, which builds them once."""

MAX_WORKERS = 4
"""pytest-xdist workers at most (``-n auto``): each TensorFlow build takes gigabytes of memory."""


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "slow(minutes=0): starts TensorFlow to train (or several times); runs after the light tests, "
        "the longest (by its estimate in minutes) first so that parallel workers finish together",
    )


def pytest_xdist_auto_num_workers(config) -> int:
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS))


def _order(item) -> tuple[bool, float]:
    """Light tests first, so a failure shows in the first minutes; then the slow ones, longest first."""
    marker = item.get_closest_marker("slow")
    slow = bool(marker or SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())))
    return slow, -float(marker.kwargs.get("minutes", 0)) if marker else 0.0


def pytest_collection_modifyitems(config, items):
    items.sort(key=_order)  # stable: tests of equal rank keep their order
    for item in items:
        if item.path.name in MODULE_GROUPS:
            item.add_marker(pytest.mark.xdist_group(item.path.name))


# ---- CVAT double fixtures (tests/cvat_double) below ------------------------------------------

from tests.cvat_double import CVATDouble  # noqa: E402


@pytest.fixture
def cvat_double():
    """A fresh CVAT double per test (starts in milliseconds), stopped afterwards."""
    with CVATDouble() as double:
        yield double


# ---- end of CVAT double fixtures -------------------------------------------------------------
