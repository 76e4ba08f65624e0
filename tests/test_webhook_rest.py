"""docs/rest.md, run as written: its curl and Python examples against the api-server on loopback.

The code blocks are taken from the document itself, so the document cannot drift from what
Airflow accepts. Each must create a queued run of ``cvat_retrain`` with the documented conf.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.fixtures.webhooks import ApiServer, dag_runs

DOC = Path(__file__).resolve().parents[1] / "docs" / "rest.md"


def code_block(language: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 1, f"expected one {language} block in {DOC}"
    return blocks[0]


def doc_env(server: ApiServer) -> dict[str, str]:
    return {
        **os.environ,
        "AIRFLOW_URL": server.url,
        "AIRFLOW_USER": server.user,
        "AIRFLOW_PASSWORD": server.password,
    }


@pytest.mark.skipif(not (shutil.which("curl") and shutil.which("jq")), reason="needs curl and jq")
def test_curl_example_queues_a_run(airflow_api, webhook_dags) -> None:
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", code_block("bash")],
        env=doc_env(airflow_api),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    answer = requests.models.complexjson.loads(done.stdout)
    assert answer["state"] == "queued"
    runs = dag_runs("cvat_retrain")
    assert [(r["run_id"], r["state"], r["run_type"]) for r in runs] == [
        (answer["dag_run_id"], "queued", "manual")
    ]
    assert runs[0]["logical_date"] is None
    assert runs[0]["conf"] == {
        "task_ids": [12, 13],
        "model": "ssd-mobilenet-v2-coco",
        "arguments": "epochs=100;batch_size=24",
        "emails": ["team@example.com"],
        "only_finished": True,
        "execution": "local",
    }


def test_python_example_queues_a_run(airflow_api, webhook_dags) -> None:
    done = subprocess.run(
        [sys.executable, "-c", code_block("python")],
        env=doc_env(airflow_api),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    run_id, state = done.stdout.split()
    assert state == "queued"
    runs = dag_runs("cvat_retrain")
    assert [(r["run_id"], r["conf"]) for r in runs] == [
        (run_id, {"project_id": 4, "model": "frcnn-res50-coco", "num_clones": 2, "execution": "kubernetes"})
    ]


def test_without_a_token_nothing_is_queued(airflow_api, webhook_dags) -> None:
    url = f"{airflow_api.url}/api/v2/dags/cvat_retrain/dagRuns"
    body = {"logical_date": None, "conf": {"task_ids": [1]}}
    assert requests.post(url, json=body, timeout=10).status_code == 401
    bad = {"Authorization": "Bearer not-a-jwt"}
    assert requests.post(url, json=body, headers=bad, timeout=10).status_code in (401, 403)
    wrong = requests.post(
        f"{airflow_api.url}/auth/token", json={"username": airflow_api.user, "password": "wrong"}, timeout=10
    )
    assert wrong.status_code == 401
    assert dag_runs("cvat_retrain") == []


def test_logical_date_is_required(airflow_api, webhook_dags) -> None:
    headers = {"Authorization": f"Bearer {airflow_api.token()}"}
    url = f"{airflow_api.url}/api/v2/dags/cvat_retrain/dagRuns"
    assert requests.post(url, json={"conf": {}}, headers=headers, timeout=10).status_code == 422
    assert dag_runs("cvat_retrain") == []
