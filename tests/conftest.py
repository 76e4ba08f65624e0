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

# ---- CVAT double fixtures (tests/cvat_double) below ------------------------------------------

import pytest  # noqa: E402

from tests.cvat_double import CVATDouble  # noqa: E402


@pytest.fixture
def cvat_double():
    """A fresh CVAT double per test (starts in milliseconds), stopped afterwards."""
    with CVATDouble() as double:
        yield double


# ---- end of CVAT double fixtures -------------------------------------------------------------
