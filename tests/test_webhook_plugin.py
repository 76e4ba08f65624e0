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
        "from airflow_cvat.plugins.webhook import CVATWebhookPlugin\n"
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
    ours = [p for p in listed if p["name"] == "cvat_webhook"]
    assert len(ours) == 1, listed
    assert "/cvat" in json.dumps(ours[0]["fastapi_apps"])
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, airflow_cvat.plugins.webhook as m; "
            "print(sorted(n for n in ('tensorflow', 'cvat_sdk') if n in sys.modules))",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert probe.stdout.strip().splitlines()[-1] == "[]", probe.stderr[-2000:]


def test_url_prefix_is_not_reserved() -> None:
    from airflow.api_fastapi.app import RESERVED_URL_PREFIXES

    from airflow_cvat.plugins.webhook import CVATWebhookPlugin

    (app,) = CVATWebhookPlugin.fastapi_apps
    assert app["url_prefix"] == "/cvat"
    assert not any(app["url_prefix"].startswith(prefix) for prefix in RESERVED_URL_PREFIXES)
