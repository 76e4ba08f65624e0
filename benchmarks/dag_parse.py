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

The reference that matters is cvat_retrain's own tasks and edges rebuilt from stock
EmptyOperators (written by reading the parsed DAG), so the ratio against it is what the
provider's imports and operators cost at parse time, not the size of the graph. A second
reference adds the DAG's own arguments (the trigger form's params, the schedule, the docs) to
that graph: with a schedule, Airflow validates every param's default against its JSON Schema
while the DAG is built, and copies the params into every task, so the form costs parse time
whatever the operators are. The ratio against it is the provider's share alone.
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
EMPTY = "same graph, EmptyOperators"
EMPTY_FORM = "same graph and form, EmptyOps"

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
params = {name: {"value": param.value, "description": param.description, "schema": param.schema}
          for name, param in ((n, dag.params.get_param(n)) for n in dag.params)}
print(json.dumps({"graph": {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks},
                  "docs": {t.task_id: t.doc_md for t in dag.tasks}, "params": params,
                  "schedule": dag.schedule if isinstance(dag.schedule, str) else None,
                  "doc_md": dag.doc_md, "tags": sorted(dag.tags)}))
"""


def read_cvat_retrain(env: dict[str, str]) -> dict:
    """cvat_retrain's tasks, edges, docs and params, read from the parsed DAG."""
    proc = subprocess.run(
        [sys.executable, "-c", GRAPH, str(REPO / "dags" / "cvat_retrain.py")],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    return json.loads(proc.stdout.strip().splitlines()[-1])


def same_graph_of_empty_operators(dag: dict, with_dag_arguments: bool = False) -> str:
    """Python source of a DAG with cvat_retrain's task ids and edges, every task an EmptyOperator;
    ``with_dag_arguments``: also its params (the trigger form), schedule, tags and docs."""
    graph = dag["graph"]
    arguments = "schedule=None"
    if with_dag_arguments:
        schedule = dag["schedule"]
        params = {
            name: f"Param({p['value']!r}, {p['description']!r}, schema={p['schema']!r})"
            for name, p in dag["params"].items()
        }
        arguments = (
            f"schedule={schedule!r}, catchup=False, max_active_runs=1, params={{"
            + ", ".join(f"{name!r}: {value}" for name, value in params.items())
            + f"}}, render_template_as_native_obj=True, tags={dag['tags']!r}, doc_md={dag['doc_md']!r}"
        )
    lines = [
        "import pendulum",
        "from airflow.providers.standard.operators.empty import EmptyOperator",
        "from airflow.sdk import DAG, Param",
        f"with DAG(dag_id='empty_graph', start_date=pendulum.datetime(2025, 1, 1), {arguments}) as dag:",
        f"    tasks = {{name: EmptyOperator(task_id=name) for name in {sorted(graph)!r}}}",
    ]
    lines += [f"    tasks[{up!r}] >> tasks[{down!r}]" for up, downs in graph.items() for down in downs]
    if with_dag_arguments:
        lines += [f"    docs = {dag['docs']!r}", "    for each in dag.tasks:"]
        lines += ["        each.doc_md = docs[each.task_id]"]
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
        cvat_retrain = read_cvat_retrain(env)
        empty = Path(home) / "empty_graph.py"
        empty.write_text(same_graph_of_empty_operators(cvat_retrain))
        empty_form = Path(home) / "empty_graph_form.py"
        empty_form.write_text(same_graph_of_empty_operators(cvat_retrain, with_dag_arguments=True))
        files = {
            "trivial one-task DAG": trivial,
            EMPTY: empty,
            EMPTY_FORM: empty_form,
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
            f"{name:<31} median {median:7.0f} ms   worst {worst:7.0f} ms"
            f"   dags {runs[0]['dags']}   errors {runs[0]['errors'] or 'none'}"
            f"   heavy imports {runs[0]['heavy_imports'] or 'none'}"
        )

    for reference in (EMPTY, EMPTY_FORM):
        print(f"cvat_retrain / {reference}: {medians['dags/cvat_retrain.py'] / medians[reference]:.2f}x")


if __name__ == "__main__":
    main()
