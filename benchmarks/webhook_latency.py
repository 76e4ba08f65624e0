"""Latency from a CVAT webhook delivery (HTTP POST) to a queued DAG run in the metadata DB.

Run by hand: ``.venv/bin/python benchmarks/webhook_latency.py [deliveries] [--cooldown N]``
(default 200 deliveries, cool-down 0 so no two are merged). A fresh Airflow home with a SQLite
metadata DB; the real api-server app (``create_app()``, bridge plugin mounted) served by uvicorn on
127.0.0.1 from a thread; each delivery is the recorded ``update:job`` completion, re-signed, for a
distinct job and task, sent one after another over one keep-alive connection.

Two figures per delivery:
* answer: POST sent -> 202 received. The bridge commits the run before answering, so this is
  an upper bound of "delivery -> queued run in the DB" as CVAT sees it.
* queued_at: POST sent -> the run's ``queued_at`` column (set by Airflow when the run is created,
  same clock), read back from the DB afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RECORDED = Path(os.environ.get("CVAT_RECORDED_DIR", ROOT / "tests" / "cvat_recorded"))


def configure(home: Path, cooldown: int) -> None:
    """Airflow reads its configuration at import: set the environment first."""
    os.environ.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__API_AUTH__JWT_SECRET": "benchmark-" + "0123456789" * 7,
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
            "AIRFLOW_CONN_CVAT_WEBHOOK": json.dumps(
                {"conn_type": "generic", "password": "bench-secret", "extra": {"cooldown_seconds": cooldown}}
            ),
        }
    )


def template() -> dict:
    lines = (RECORDED / "webhook_deliveries.jsonl").read_text().splitlines()
    return next(
        e for e in (json.loads(json.loads(x)["body_raw"]) for x in lines) if e["event"] == "update:job"
    )


def bodies(count: int) -> list[bytes]:
    """Distinct completions: job i of task 1000+i, no project (route task_<id>)."""
    out = []
    for i in range(count):
        event = template()
        event["job"].update(id=5000 + i, task_id=1000 + i, project_id=None)
        out.append(json.dumps(event).encode())
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("deliveries", nargs="?", type=int, default=200)
    parser.add_argument("--cooldown", type=int, default=0)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="webhook-bench-"))
    configure(home, args.cooldown)

    import requests
    from airflow import plugins_manager
    from airflow.api_fastapi.app import create_app
    from airflow.utils.db import initdb

    from airflow_cvat.webhook.bridge import CVATWebhookPlugin
    from airflow_cvat.webhook.rules import sign
    from tests.fixtures.servers import free_port
    from tests.fixtures.webhooks import dag_runs, serialize_dags, serve

    initdb()
    serialize_dags(home / "dags", ("cvat_retrain",))
    plugins_manager.get_fastapi_plugins = lambda: (
        CVATWebhookPlugin.fastapi_apps,
        [],
    )  # the entry point's effect
    port = free_port()
    server, thread = serve(create_app(), port)
    url = f"http://127.0.0.1:{port}/cvat/webhook"
    payloads = bodies(args.deliveries + 5)
    answers, sent_at = [], {}
    try:
        with requests.Session() as http:
            for index, body in enumerate(payloads):
                headers = {"Content-Type": "application/json", "X-Signature-256": sign("bench-secret", body)}
                wall, start = time.time(), time.perf_counter()
                answer = http.post(url, data=body, headers=headers, timeout=30)
                elapsed = time.perf_counter() - start
                assert answer.status_code == 202, (answer.status_code, answer.text)
                if index >= 5:  # the first few warm up imports, the DAG cache and the pool
                    answers.append(elapsed)
                    sent_at[answer.json()["dag_run_id"]] = wall
    finally:
        server.should_exit = True
        thread.join(timeout=15)
    runs = {r["run_id"]: r for r in dag_runs("cvat_retrain")}
    queued = [runs[run_id]["queued_at"].timestamp() - wall for run_id, wall in sent_at.items()]
    assert all(runs[run_id]["state"] == "queued" for run_id in sent_at)
    ms = 1000.0
    print(
        f"webhook delivery -> queued DAG run, {len(answers)} deliveries on loopback, SQLite, "
        f"cool-down {args.cooldown}s"
    )
    print(
        f"  POST -> 202 answer (run committed): p50 {statistics.median(answers) * ms:.1f} ms, "
        f"p99 {percentile(answers, 99) * ms:.1f} ms, max {max(answers) * ms:.1f} ms"
    )
    print(
        f"  POST -> run.queued_at:              p50 {statistics.median(queued) * ms:.1f} ms, "
        f"p99 {percentile(queued, 99) * ms:.1f} ms"
    )
    print(f"  runs in the DB: {len(sent_at)} queued, {datetime.now():%Y-%m-%d %H:%M}")


if __name__ == "__main__":
    main()
