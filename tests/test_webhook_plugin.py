"""The plugin as Airflow's plugins manager sees it, in a fresh process (``airflow plugins``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_airflow_discovers_the_bridge(tmp_path: Path) -> None:
    """A plugins folder importing the plugin class stands in for the entry point: Airflow lists
    the FastAPI app at /cvat, and the plugin module pulls in neither TensorFlow nor cvat-sdk."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "cvat_webhook_plugin.py").write_text(
        "from airflow_cvat.webhook.bridge import CVATWebhookPlugin\n"
    )
    env = {**os.environ, "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins)}
    done = subprocess.run(
        [sys.executable, "-m", "airflow", "plugins", "--output", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    listed = json.loads(done.stdout[done.stdout.index("[") :])
    ours = [p for p in listed if p["name"].startswith("cvat_webhook")]
    assert len(ours) == 1, listed
    # Admin > Plugins (GET /api/v2/plugins, the same get_plugin_info as this command) shows only
    # a plugin's name and source: the name carries the bridge's path.
    assert ours[0]["name"] == "cvat_webhook: POST /cvat/webhook"
    (app,) = ours[0]["fastapi_apps"]
    assert app["url_prefix"] == "/cvat" and app["name"] == "CVAT webhook bridge (POST /cvat/webhook)"
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, airflow_cvat.webhook.bridge as m; "
            "print(sorted(n for n in ('tensorflow', 'cvat_sdk') if n in sys.modules))",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert probe.stdout.strip().splitlines()[-1] == "[]", probe.stderr[-2000:]


def test_url_prefix_is_not_reserved() -> None:
    from airflow.api_fastapi.app import RESERVED_URL_PREFIXES

    from airflow_cvat.webhook.bridge import CVATWebhookPlugin

    (app,) = CVATWebhookPlugin.fastapi_apps
    assert app["url_prefix"] == "/cvat"
    assert not any(app["url_prefix"].startswith(prefix) for prefix in RESERVED_URL_PREFIXES)


def test_unconfigured_bridge_names_the_connection_to_create(airflow_api, monkeypatch) -> None:
    """The 503 says which connection and which fields, and echoes nothing of the connection."""
    import requests

    monkeypatch.delenv("AIRFLOW_CONN_CVAT_WEBHOOK", raising=False)
    missing = requests.post(f"{airflow_api.url}/cvat/webhook", data=b"{}", timeout=30)
    assert missing.status_code == 503
    detail = missing.json()["detail"]
    assert "connection 'cvat_webhook' does not exist" in detail
    assert "secret as Password" in detail and "Extra" in detail

    monkeypatch.setenv("AIRFLOW_CONN_CVAT_WEBHOOK", json.dumps({"conn_type": "generic"}))
    no_secret = requests.post(f"{airflow_api.url}/cvat/webhook", data=b"{}", timeout=30)
    assert no_secret.status_code == 503 and "has no secret in its Password" in no_secret.json()["detail"]

    bad_extra = {"conn_type": "generic", "password": "s3cret-value", "extra": {"cooldown_seconds": "soon"}}
    monkeypatch.setenv("AIRFLOW_CONN_CVAT_WEBHOOK", json.dumps(bad_extra))
    invalid = requests.post(f"{airflow_api.url}/cvat/webhook", data=b"{}", timeout=30)
    assert invalid.status_code == 503 and "Extra of Airflow connection 'cvat_webhook'" in invalid.text
    assert "s3cret-value" not in invalid.text and "soon" not in invalid.text


STRICT_DAG = """
from airflow.sdk import DAG, Param
from airflow.providers.standard.operators.empty import EmptyOperator

with DAG(dag_id="{dag_id}", schedule=None, catchup=False,
         params={{"project_id": Param(None, type=["null", "integer"]),
                  "model": Param(None, type=["null", "string"], enum=[None, "ssd-mobilenet-v2-coco"])}}):
    EmptyOperator(task_id="noop")
"""


def test_a_routing_conf_the_dags_params_refuse_is_a_422_not_a_retried_500(
    airflow_api, webhook_conn, monkeypatch
) -> None:
    """cvat_retrain's params check choices (e.g. the model list); a route naming another model is
    a configuration mistake CVAT's retries cannot fix, so the answer is a 4xx naming it."""
    import requests
    from airflow.configuration import conf as airflow_conf

    from tests.fixtures import webhooks

    monkeypatch.setattr(webhooks, "_DAG_SOURCE", STRICT_DAG)
    paths = webhooks.serialize_dags(Path(airflow_conf.get("core", "dags_folder")), ("cvat_strict",))
    try:
        webhook_conn(dag_id="cvat_strict", conf={"model": "yolo-v9"}, cooldown_seconds=0)
        delivery = webhooks.deliveries()[7]  # the recorded job completion (project 1)
        answer = requests.post(
            airflow_api.webhook_url, data=delivery.body, headers=delivery.headers, timeout=30
        )
        assert answer.status_code == 422, answer.text
        assert "param model" in answer.json()["detail"] and "'cvat_webhook'" in answer.json()["detail"]
        assert webhooks.dag_runs("cvat_strict") == []
    finally:
        for path in paths:
            path.unlink(missing_ok=True)
