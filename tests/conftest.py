"""Shared fixtures: an isolated Airflow (SQLite metadata DB), real servers on loopback.

Airflow reads its configuration at import time, so the environment is set here, before any test
module imports Airflow.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

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

# ---- order: light tests first -------------------------------------------------------------------

SLOW_FIXTURES = {"ssd_run", "trained_run"}
"""A test that uses one of these waits for a real training run: it is slow too."""


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: starts TensorFlow to train (or several times); runs after the light tests"
    )


def pytest_collection_modifyitems(config, items):
    """Light tests first, so a failure shows in the first minutes; slow ones keep their order."""
    items.sort(
        key=lambda item: bool(
            item.get_closest_marker("slow") or SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        )
    )


# ---- CVAT double fixtures (tests/cvat_double) below ------------------------------------------

import pytest  # noqa: E402

from tests.cvat_double import CVATDouble  # noqa: E402


@pytest.fixture
def cvat_double():
    """A fresh CVAT double per test (starts in milliseconds), stopped afterwards."""
    with CVATDouble() as double:
        yield double


# ---- end of CVAT double fixtures -------------------------------------------------------------
