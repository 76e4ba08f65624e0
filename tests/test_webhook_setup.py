"""The setup command against the CVAT double: create, idempotent update, organization, errors, ping.

The last test is the whole loop: the command registers a webhook in the CVAT double pointing at
the bridge in the api-server, and the double's ping (signed with the secret the command read
from the Airflow connection) is accepted by the bridge.
"""

from __future__ import annotations

import json
import subprocess
import sys

import airflow.settings  # noqa: F401  (configure Airflow's logging outside any captured test output)
import pytest
import requests

from airflow_cvat.webhook.register import main
from tests.cvat_double import CVATDouble
from tests.fixtures.webhooks import dag_runs

URL = "https://airflow.example.com/cvat/webhook"
SECRET = "setup-secret-value"


@pytest.fixture
def cvat(cvat_double: CVATDouble, monkeypatch) -> CVATDouble:
    cvat_double.add_project("fixture-project")
    monkeypatch.setenv(
        "AIRFLOW_CONN_CVAT_DEFAULT",
        json.dumps({"conn_type": "cvat", "host": cvat_double.url, "password": CVATDouble.DEFAULT_TOKEN}),
    )
    monkeypatch.setenv("AIRFLOW_CONN_CVAT_WEBHOOK", json.dumps({"conn_type": "generic", "password": SECRET}))
    return cvat_double


def test_creates_a_project_webhook(cvat: CVATDouble, capsys) -> None:
    assert main(["--project-id", "1", "--url", URL]) == 0
    out = capsys.readouterr()
    assert out.out.splitlines()[-1] == f"webhook 1 created: project 1 -> {URL} (events: update:job)"
    assert SECRET not in out.out + out.err
    hook = cvat.webhooks[1]
    assert (hook.type, hook.project_id, hook.target_url, hook.events) == ("project", 1, URL, ["update:job"])
    assert (hook.secret, hook.content_type, hook.enable_ssl, hook.is_active) == (
        SECRET,
        "application/json",
        True,
        True,
    )
    sent = cvat.requests_to("POST", r"^/api/webhooks/?$")[0].json()
    assert sent["secret"] == SECRET and sent["type"] == "project"


def test_second_run_updates_instead_of_adding(cvat: CVATDouble, capsys, monkeypatch) -> None:
    assert main(["--project-id", "1", "--url", URL]) == 0
    cvat.webhooks[1].is_active = False
    monkeypatch.setenv(
        "AIRFLOW_CONN_CVAT_WEBHOOK", json.dumps({"conn_type": "generic", "password": "rotated"})
    )
    assert (
        main(["--project-id", "1", "--url", URL, "--events", "update:job,update:task", "--no-verify-ssl"])
        == 0
    )
    assert capsys.readouterr().out.splitlines()[-1].startswith("webhook 1 updated: project 1")
    assert list(cvat.webhooks) == [1]
    hook = cvat.webhooks[1]
    assert (hook.events, hook.secret, hook.enable_ssl, hook.is_active) == (
        ["update:job", "update:task"],
        "rotated",
        False,
        True,
    )
    # Another URL or another project is another webhook.
    assert main(["--project-id", "1", "--url", URL + "/other"]) == 0
    assert sorted(cvat.webhooks) == [1, 2]


def test_organization_webhook(cvat: CVATDouble, capsys) -> None:
    cvat.add_organization("team")
    assert main(["--organization", "team", "--url", URL]) == 0
    hook = cvat.webhooks[1]
    assert (hook.type, hook.project_id, hook.organization_id) == ("organization", None, 1)
    assert cvat.requests_to("POST", r"^/api/webhooks/?$")[0].header("X-Organization") == "team"
    assert main(["--organization", "team", "--url", URL]) == 0
    assert list(cvat.webhooks) == [1]


def test_errors_are_one_line_without_the_secret(cvat: CVATDouble, capsys, monkeypatch) -> None:
    assert main(["--project-id", "99", "--url", URL]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: CVAT refused the webhook (404)") and SECRET not in err
    assert main(["--project-id", "1", "--url", URL, "--events", "update:nothing"]) == 2
    assert "invalid webhook settings: Invalid value for `value` (update:nothing)" in capsys.readouterr().err
    monkeypatch.setenv("AIRFLOW_CONN_CVAT_WEBHOOK", json.dumps({"conn_type": "generic"}))
    assert main(["--project-id", "1", "--url", URL]) == 2
    assert "has no password" in capsys.readouterr().err
    assert cvat.webhooks == {}


def test_runs_as_a_module(cvat: CVATDouble) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "airflow_cvat.webhook.register", "--project-id", "1", "--url", URL],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith(f"-> {URL} (events: update:job)")
    assert SECRET not in done.stdout + done.stderr


def test_registered_webhook_pings_the_bridge(cvat, airflow_api, webhook_dags, webhook_conn, capsys) -> None:
    """CVAT double -> bridge in the api-server: the ping is signed with the connection's secret."""
    webhook_conn(SECRET)
    assert main(["--project-id", "1", "--url", airflow_api.webhook_url, "--ping"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("ping: the bridge answered 200") and '"pong"' in out[-1]
    assert cvat.webhooks[1].last_status == 200
    # Re-running after the bridge's secret was rotated pushes the new secret: the ping passes again.
    webhook_conn("rotated-secret")
    assert main(["--project-id", "1", "--url", airflow_api.webhook_url, "--ping"]) == 0
    assert cvat.webhooks[1].secret == "rotated-secret"
    # CVAT still holding an old secret: its deliveries are refused.
    cvat.webhooks[1].secret = "stale-secret"
    answer = requests.post(
        f"{cvat.url}/api/webhooks/1/ping",
        headers={"Authorization": f"Bearer {CVATDouble.DEFAULT_TOKEN}"},
        timeout=30,
    )
    assert answer.json()["status_code"] == 401
    assert webhook_dags and dag_runs("cvat_retrain") == []
