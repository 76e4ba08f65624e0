"""Run the whole cvat_retrain DAG on this machine: no CVAT server, no cloud, no GPU.

What it sets up, all under ./demo-output (delete it to start over):
- a CVAT export (COCO 1.0 with images) of generated shapes, standing in for an export that CVAT
  wrote to cloud storage: the DAG's `source_uri`;
- a base checkpoint for ssd-mobilenet-v2-coco with RANDOM weights (`trainer init-base`: no
  download) and a catalogue file pointing the model at it. A real run instead pulls the model's
  published pretrained weights (README, "Base weights"; offline clusters mirror them);
- an Airflow home on SQLite, the artifact root `file://.../artifacts`, and an SMTP server on
  127.0.0.1 that writes every message it receives to ./demo-output/mail/.
Then Airflow runs the DAG (`airflow dags test`): export, pull, local CPU training on a short
schedule, publish (SavedModel, CVAT nuclio function, auto-annotation module, model card), email.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # demo_data/ (the generated CVAT export) is not in the wheel
OUT = REPO / "demo-output"
MODEL = "ssd-mobilenet-v2-coco"
IMAGES = int(os.environ.get("DEMO_IMAGES", "200"))
ARGUMENTS = os.environ.get(
    "DEMO_ARGUMENTS", "epochs=600;batch_size=4;input_size=128;initial_learning_rate=0.02"
)
RECIPIENT = "annotators@example.com"


def step(message: str) -> float:
    print(f"\n==> {message}", flush=True)
    return time.perf_counter()


def done(started: float, timings: dict[str, float], name: str) -> None:
    timings[name] = time.perf_counter() - started
    print(f"    ({timings[name]:.1f} s)", flush=True)


def make_source() -> Path:
    from demo_data.synthetic import write_export_file

    path = OUT / "cvat-export" / "shapes-coco.zip"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_export_file(path, IMAGES, format="COCO 1.0", width=128, height=128, seed=7)
    return path


def make_base_model(env: dict[str, str]) -> Path:
    weights = OUT / "weights" / MODEL
    if not (weights / "checkpoint").exists():
        subprocess.run(
            [sys.executable, "-m", "airflow_cvat.trainer", "init-base", "--model", MODEL,
             "--output", f"file://{weights}"],
            env=env, check=True,
        )  # fmt: skip
    catalog = OUT / "catalog.json"
    entry = {"name": MODEL, "family": "retinanet", "backbone": "mobilenet_v2", "input_size": 128,
             "checkpoint": f"file://{weights}/",
             "description": "demo base model: RANDOM weights (init-base)"}  # fmt: skip
    catalog.write_text(json.dumps({"models": [entry]}, indent=2))
    return catalog


def start_smtp(port: int):
    from aiosmtpd.controller import Controller

    mail = OUT / "mail"
    mail.mkdir(parents=True, exist_ok=True)

    class SaveToFolder:
        async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
            name = mail / f"{time.strftime('%Y%m%dT%H%M%S')}-{len(list(mail.iterdir())):03d}.eml"
            name.write_bytes(envelope.original_content or envelope.content)
            return "250 OK"

    controller = Controller(SaveToFolder(), hostname="127.0.0.1", port=port)
    controller.start()
    return controller, mail


def airflow_env(smtp_port: int, catalog: Path) -> dict[str, str]:
    home = OUT / "airflow"
    settings = {"root": f"file://{OUT / 'artifacts'}", "catalog_file": str(catalog), "emails": [RECIPIENT]}
    extra = {"disable_tls": True, "disable_ssl": True, "from_email": "airflow@example.com"}
    smtp = {"conn_type": "smtp", "host": "127.0.0.1", "port": smtp_port, "extra": extra}
    return os.environ | {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW_VAR_CVAT_RETRAIN": json.dumps(settings),
        "AIRFLOW_CONN_SMTP_DEFAULT": json.dumps(smtp),
        "CVAT_RETRAIN_SCHEDULE": "none",
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    }


def airflow(env: dict[str, str], *args: str) -> None:
    subprocess.run([str(Path(sys.executable).parent / "airflow"), *args], env=env, check=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def task_durations(database: Path) -> list[tuple[str, str, float]]:
    """(task, state, seconds) of the newest DAG run, read from the metadata database."""
    query = (
        "SELECT task_id, state, duration FROM task_instance WHERE run_id = "
        "(SELECT run_id FROM dag_run WHERE dag_id = 'cvat_retrain' ORDER BY id DESC LIMIT 1) "
        "ORDER BY start_date"
    )
    with sqlite3.connect(database) as connection:
        return [(task, str(state), float(seconds or 0)) for task, state, seconds in connection.execute(query)]


def main() -> int:
    timings: dict[str, float] = {}
    OUT.mkdir(exist_ok=True)
    started = step(f"Generating a CVAT export of {IMAGES} images")
    source = make_source()
    done(started, timings, "generate export")

    port = free_port()
    env = airflow_env(port, OUT / "catalog.json")
    started = step(f"Writing a RANDOM base checkpoint for {MODEL} (init-base, offline; not pretrained)")
    make_base_model(env)
    done(started, timings, "base checkpoint")

    started = step("Creating the Airflow metadata database (SQLite)")
    airflow(env, "db", "migrate")
    done(started, timings, "airflow db migrate")

    controller, mail = start_smtp(port)
    conf = {"source_uri": f"file://{source}", "model": MODEL, "arguments": ARGUMENTS, "emails": [RECIPIENT]}
    started = step(f"Running the DAG: airflow dags test cvat_retrain --conf '{json.dumps(conf)}'")
    try:
        airflow(env, "dags", "test", "cvat_retrain", "--conf", json.dumps(conf))
    finally:
        time.sleep(1)
        controller.stop()
    done(started, timings, "dag run")

    latest = OUT / "artifacts" / "models" / MODEL / "LATEST"
    print("\n==> Done")
    for name, seconds in timings.items():
        print(f"    {name:<22} {seconds:6.1f} s")
    for task, state, seconds in task_durations(OUT / "airflow" / "airflow.db"):
        print(f"      task {task:<17} {seconds:6.1f} s  {state}")
    if latest.exists():
        version = json.loads(latest.read_text())
        print(f"    model (LATEST):  {OUT / 'artifacts' / 'models' / MODEL / version['version']}")
        print(f"    AP50:            {version.get('AP50')}")
    else:
        print("    LATEST was not written: see the DAG's log above")
    messages = sorted(mail.glob("*.eml"))
    print(f"    email:           {messages[-1] if messages else 'none received'}")
    print(
        "    base weights:    RANDOM (init-base), so expect a poor model. A real run pulls the model's\n"
        "                     published pretrained weights into {root}/base_models/; clusters without\n"
        '                     internet map them to their own bucket with "mirrors" in the cvat_retrain\n'
        '                     Variable (README, "Base weights").'
    )
    return 0 if latest.exists() and messages else 1


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
