"""CVATExportOperator against one cvat-sdk task export of the same task, on the CVAT test double.

Run by hand: `.venv/bin/python benchmarks/export.py [--images 200] [--jobs 1 4 20] [--repeat 3]`.

For each job count, a task of `--images` generated 128x128 JPEGs is split into that many jobs,
all completed, and exported twice from one child process: by cvat-sdk (`make_client`,
`tasks.retrieve(id).export_dataset(..., include_images=True)`, polling every `--sdk-period`
seconds, 0.1 by default: the sdk's own default of 5 s would flatter the operator) and by the
operator (`execute`, its defaults, `record_latest=False` so that repeats are not skipped). The
double runs with `background_exports`: a worker thread writes each export while the clients
poll, so both wait for the same server-side work. Median of `--repeat` runs, after a warm-up of
both on a small task (first-use imports are not export work). The operator's time includes what
the sdk call does not do: reading the jobs, the fingerprint, checking the zip, the manifest.
`--per-job` also times the job-by-job path (that of a task with unfinished jobs) over all jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = """
import json, statistics, sys, time
from cvat_sdk import make_client
from airflow_cvat.operators.export import CVATExportOperator

url, token, task_id, warmup, workdir, repeat, sdk_period, per_job = sys.argv[1:9]
import os; os.makedirs(workdir, exist_ok=True)
task_id, warmup, repeat, sdk_period = int(task_id), int(warmup), int(repeat), float(sdk_period)

def sdk(task, path):
    with make_client(url, access_token=token) as client:
        client.config.status_check_period = sdk_period
        client.tasks.retrieve(task).export_dataset("COCO 1.0", path, include_images=True)

class PerJob(CVATExportOperator):
    prefer_task_exports = False  # the path of a task with unfinished jobs, here over every job

def operator(task, destination, cls=CVATExportOperator):
    # Defaults, fingerprint check included; record_latest=False so that the next run is not skipped.
    cls(task_id="export", task_ids=[task], destination=destination, record_latest=False).execute(context={})

def timed(fn, *args):
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start

sdk(warmup, f"{workdir}/warmup.zip")
operator(warmup, f"file://{workdir}/warmup/run")
times = {"sdk": [], "operator": [], "per_job": []}
for i in range(repeat):
    times["sdk"].append(timed(sdk, task_id, f"{workdir}/sdk-{i}.zip"))
    times["operator"].append(timed(operator, task_id, f"file://{workdir}/op/run-{i}"))
    if per_job == "1":
        times["per_job"].append(timed(operator, task_id, f"file://{workdir}/job/run-{i}", PerJob))
print(json.dumps({k: statistics.median(v) if v else None for k, v in times.items()}))
"""


def completed_task(cvat, images: int, jobs: int) -> int:
    task_id = cvat.add_task(f"bench-{images}-{jobs}", frames=images, segment_size=-(-images // jobs))
    assert len(cvat.job_ids(task_id)) == jobs, "images must split into that many jobs"
    for job_id in cvat.job_ids(task_id):
        cvat.set_job(job_id, state="completed", stage="acceptance")
    return task_id


def measure(
    cvat, images: int, jobs: int, repeat: int, sdk_period: float, per_job: bool, workdir: Path
) -> dict:
    task_id = completed_task(cvat, images, jobs)
    warmup = completed_task(cvat, 4, 1)
    env = os.environ | {
        "AIRFLOW_HOME": str(workdir / "airflow"),
        "AIRFLOW_CONN_CVAT_DEFAULT": json.dumps(
            {"conn_type": "cvat", "host": cvat.url, "password": cvat.DEFAULT_TOKEN}
        ),
        "PYTHONPATH": str(ROOT),
    }
    args = [cvat.url, cvat.DEFAULT_TOKEN, task_id, warmup, workdir / f"jobs-{jobs}", repeat, sdk_period]
    args.append(int(per_job))
    out = subprocess.run(
        [sys.executable, "-c", CHILD, *map(str, args)], env=env, capture_output=True, text=True
    )
    if out.returncode:
        raise SystemExit(f"the export child failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from tests.cvat_double import CVATDouble

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 4, 20])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sdk-period", type=float, default=0.1)
    parser.add_argument("--per-job", action="store_true", help="also time the job-by-job path")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, CVATDouble() as cvat:
        cvat.background_exports = True
        header = f"{'jobs':>5} {'images':>7} {'cvat-sdk s':>11} {'operator s':>11} {'ratio':>6}"
        print(header + (f" {'job by job s':>13} {'ratio':>6}" if args.per_job else ""))
        for jobs in args.jobs:
            r = measure(cvat, args.images, jobs, args.repeat, args.sdk_period, args.per_job, Path(tmp))
            line = f"{jobs:>5} {args.images:>7} {r['sdk']:>11.2f} {r['operator']:>11.2f}"
            line += f" {r['operator'] / r['sdk']:>6.2f}"
            if args.per_job:
                line += f" {r['per_job']:>13.2f} {r['per_job'] / r['sdk']:>6.2f}"
            print(line)


if __name__ == "__main__":
    main()
