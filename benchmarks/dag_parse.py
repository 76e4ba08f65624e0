"""Parse time of dags/cvat_retrain.py against a trivial one-task DAG, in the same run.

Run by hand::

    .venv/bin/python benchmarks/dag_parse.py [--repeat 5]

Each parse runs in a fresh interpreter that has already imported Airflow (as the dag-processor
has), then times ``DagBag`` on the one file: what is measured is the file's own imports and
top-level code. Prints the median and the worst of ``--repeat`` parses for each file, and
whether parsing imported TensorFlow or the Kubernetes provider (it must not).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

TRIVIAL = """
import pendulum
from airflow.sdk import DAG, task

with DAG(dag_id="trivial", schedule=None, start_date=pendulum.datetime(2025, 1, 1)):

    @task
    def hello():
        return "hello"

    hello()
"""

PROBE = """
import json, sys, time
import airflow.sdk  # what the dag-processor has loaded before it parses a file
from airflow.models.dagbag import DagBag
started = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
seconds = time.perf_counter() - started
heavy = [m for m in ("tensorflow", "airflow.providers.cncf.kubernetes.operators.pod") if m in sys.modules]
print(json.dumps({"seconds": seconds, "dags": sorted(bag.dag_ids), "errors": list(bag.import_errors),
                  "heavy_imports": heavy}))
"""


def parse_once(path: Path, env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"parsing {path} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        trivial = Path(home) / "trivial.py"
        trivial.write_text(TRIVIAL)
        env = os.environ | {
            "AIRFLOW_HOME": home,
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "PYTHONPATH": str(REPO),
        }
        files = {"trivial one-task DAG": trivial, "dags/cvat_retrain.py": REPO / "dags" / "cvat_retrain.py"}
        results: dict[str, list[dict]] = {name: [] for name in files}
        for _ in range(options.repeat):  # interleaved, so both see the same machine load
            for name, path in files.items():
                results[name].append(parse_once(path, env))
    for name, runs in results.items():
        seconds = [run["seconds"] for run in runs]
        median, worst = statistics.median(seconds) * 1000, max(seconds) * 1000
        print(
            f"{name:<24} median {median:7.0f} ms   worst {worst:7.0f} ms"
            f"   dags {runs[0]['dags']}   errors {runs[0]['errors'] or 'none'}"
            f"   heavy imports {runs[0]['heavy_imports'] or 'none'}"
        )


if __name__ == "__main__":
    main()
