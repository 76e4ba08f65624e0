"""Export throughput and peak memory of CVATExportOperator against the CVAT test double.

Run by hand: `.venv/bin/python benchmarks/export.py [sizes...]` (default 200 and 2000 images).
The double serves from this process; each export runs in a child process so that its peak RSS
(ru_maxrss) is the operator's own. Images are 128x128 generated JPEGs, 4 finished jobs per task.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = """
import json, resource, sys, time
from airflow_cvat.operators.export import CVATExportOperator
def export(task_id, destination):
    op = CVATExportOperator(task_id="export", task_ids=[task_id], destination=destination,
                            status_check_period=0.05, export_timeout=600)
    return op.execute(context={})
export(int(sys.argv[3]), sys.argv[2] + "-warmup")  # first-use imports are not export work
start = time.perf_counter()
export(int(sys.argv[1]), sys.argv[2])
elapsed = time.perf_counter() - start
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": elapsed, "peak_rss_mb": peak_mb}))
"""


def finished_task(cvat, images: int) -> int:
    task_id = cvat.add_task(f"bench-{images}", frames=images, segment_size=max(1, images // 4))
    for job_id in cvat.job_ids(task_id):
        cvat.set_job(job_id, state="completed", stage="acceptance")
    return task_id


def measure(cvat, images: int, workdir: Path) -> dict:
    task_id = finished_task(cvat, images)
    warmup = finished_task(cvat, 4)
    env = os.environ | {
        "AIRFLOW_HOME": str(workdir / "airflow"),
        "AIRFLOW_CONN_CVAT_DEFAULT": json.dumps(
            {"conn_type": "cvat", "host": cvat.url, "password": cvat.DEFAULT_TOKEN}
        ),
        "PYTHONPATH": str(ROOT),
    }
    destination = f"file://{workdir}/datasets/bench-{images}/run"
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(task_id), destination, str(warmup)],
        env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    result = json.loads(out.strip().splitlines()[-1])
    result["images"] = images
    result["images_per_s"] = images / result["seconds"]
    return result


def main() -> None:
    from tests.cvat_double import CVATDouble

    sizes = [int(a) for a in sys.argv[1:]] or [200, 2000]
    with tempfile.TemporaryDirectory() as tmp, CVATDouble() as cvat:
        print(f"{'images':>8} {'seconds':>8} {'images/s':>9} {'peak RSS MB':>12}")
        for images in sizes:
            r = measure(cvat, images, Path(tmp))
            print(f"{images:>8} {r['seconds']:>8.2f} {r['images_per_s']:>9.1f} {r['peak_rss_mb']:>12.1f}")
    print(f"(double's process peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")


if __name__ == "__main__":
    main()
