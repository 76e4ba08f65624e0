"""Parse time of dags/cvat_retrain.py against a trivial DAG and the same graph of EmptyOperators.

Run by hand::

    .venv/bin/python benchmarks/dag_parse.py [--repeat 5]

Each parse runs in a fresh interpreter that has already imported Airflow (as the dag-processor
has), then times ``DagBag`` on the one file: what is measured is the file's own imports and
top-level code. Prints the median and the worst of ``--repeat`` parses for each file, and
whether parsing imported TensorFlow or the Kubernetes provider (it must not).

Bytecode: a deployed provider is installed by pip, which compiles it, as Airflow's own modules
are; so the parses read compiled modules from a bytecode cache in a temporary folder, filled by
one untimed parse of each file (PYTHONDONTWRITEBYTECODE, if set, would otherwise make every parse
compile the provider from source, while Airflow's modules come precompiled). ``--cold`` measures
that source-compiling case instead.

The reference that matters is the third file: cvat_retrain's own tasks and edges rebuilt from
stock EmptyOperators (written by reading the parsed DAG), so the ratio against it is what the
provider's imports and operators cost at parse time, not the size of the graph.
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


GRAPH = """
import json, sys
from airflow.models.dagbag import DagBag
dag = DagBag(dag_folder=sys.argv[1]).dags["cvat_retrain"]
print(json.dumps({t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks}))
"""


def same_graph_of_empty_operators(env: dict[str, str]) -> str:
    """Python source of a DAG with cvat_retrain's task ids and edges, every task an EmptyOperator."""
    proc = subprocess.run(
        [sys.executable, "-c", GRAPH, str(REPO / "dags" / "cvat_retrain.py")],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    graph = json.loads(proc.stdout.strip().splitlines()[-1])
    lines = [
        "import pendulum",
        "from airflow.providers.standard.operators.empty import EmptyOperator",
        "from airflow.sdk import DAG",
        "with DAG(dag_id='empty_graph', schedule=None, start_date=pendulum.datetime(2025, 1, 1)):",
        f"    tasks = {{name: EmptyOperator(task_id=name) for name in {sorted(graph)!r}}}",
    ]
    lines += [f"    tasks[{up!r}] >> tasks[{down!r}]" for up, downs in graph.items() for down in downs]
    return "\n".join(lines) + "\n"


def parse_once(path: Path, env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"parsing {path} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cold", action="store_true", help="compile the provider from source each parse")
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
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env = env | (
            {"PYTHONDONTWRITEBYTECODE": "1"} if options.cold else {"PYTHONPYCACHEPREFIX": f"{home}/pyc"}
        )
        empty = Path(home) / "empty_graph.py"
        empty.write_text(same_graph_of_empty_operators(env))
        files = {
            "trivial one-task DAG": trivial,
            "same graph, EmptyOperators": empty,
            "dags/cvat_retrain.py": REPO / "dags" / "cvat_retrain.py",
        }
        results: dict[str, list[dict]] = {name: [] for name in files}
        for path in files.values():  # untimed: fills the bytecode cache
            parse_once(path, env)
        for _ in range(options.repeat):  # interleaved, so both see the same machine load
            for name, path in files.items():
                results[name].append(parse_once(path, env))
    medians = {name: statistics.median(run["seconds"] for run in runs) for name, runs in results.items()}
    for name, runs in results.items():
        seconds = [run["seconds"] for run in runs]
        median, worst = medians[name] * 1000, max(seconds) * 1000
        print(
            f"{name:<28} median {median:7.0f} ms   worst {worst:7.0f} ms"
            f"   dags {runs[0]['dags']}   errors {runs[0]['errors'] or 'none'}"
            f"   heavy imports {runs[0]['heavy_imports'] or 'none'}"
        )

    ratio = medians["dags/cvat_retrain.py"] / medians["same graph, EmptyOperators"]
    print(f"cvat_retrain / same graph of EmptyOperators: {ratio:.2f}x")


if __name__ == "__main__":
    main()
