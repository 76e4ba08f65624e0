"""Pre-annotation speed on CPU: frames/s, and the share of time spent uploading, against the CVAT double.

Run by hand::

    .venv/bin/python benchmarks/preannotate.py --model-uri file:///.../models/NAME/VERSION
    .venv/bin/python benchmarks/preannotate.py --train      # first trains a small model (minutes)

The CVAT double serves from this process (frames generated beforehand, so serving is a memory
copy); the command under test, ``python -m airflow_cvat.trainer.preannotate``, runs as a child
process exactly as PreAnnotateOperator runs it, with the token in its environment. One task per
threshold, all of its jobs in state new. Reported from the command's own summary:

* frames/s: frames over the annotation loop's wall time (after the model is loaded);
* upload share: time in ``PATCH .../annotations?action=create`` over that wall time (uploads are
  synchronous; frame downloads run on a thread pool and overlap inference, so their summed time
  is shown but is not a share of the wall time);
* startup: the process's wall time minus the loop (interpreter, TensorFlow, SavedModel load).

``--train`` trains ssd-mobilenet-v2-coco for ``--steps`` steps (default 600, batch 4, learning
rate 0.02, 128 px: the demo's schedule, about AP50 0.7) on 200 synthetic shapes of
``demo_data.datasets.make_dataset`` and uses the run folder (it has ``saved_model/``
and ``label_map.json``, which is all the command needs); ``--train-dir`` keeps it for reruns.
A model that detects nothing (a random one) measures inference but uploads nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def train_small(folder: Path, steps: int) -> str:
    """ssd-mobilenet-v2-coco at 128 px on 200 synthetic images (the demo's schedule): it detects."""
    dataset, run = folder / "dataset", folder / "run"
    if (run / "saved_model" / "saved_model.pb").exists():
        return run.as_uri()
    code = "import sys; from demo_data.datasets import make_dataset; make_dataset(sys.argv[1], 200, size=128)"
    subprocess.run([sys.executable, "-c", code, str(dataset)], check=True, cwd=ROOT)
    arguments = f"epochs={steps};batch_size=4;input_size=128;initial_learning_rate=0.02"
    subprocess.run(
        [sys.executable, "-m", "airflow_cvat.trainer", "train", "--dataset", dataset.as_uri(),
         "--output", run.as_uri(), "--model", "ssd-mobilenet-v2-coco", "--arguments", arguments],
        check=True, cwd=ROOT, capture_output=True,
    )  # fmt: skip
    return run.as_uri()


def model_labels(model_uri: str) -> list[str]:
    from airflow_cvat.trainer import preannotate

    version = preannotate.resolve_version(model_uri)
    text = Path(version.removeprefix("file://")).joinpath("label_map.json").read_text()
    return list(preannotate.load_classes(text).values())


def new_task(cvat, labels: list[str], count: int, width: int, height: int, jobs: int) -> int:
    from demo_data.synthetic import SyntheticFrame, generate_frame

    frames = []
    for number in range(count):
        frame = generate_frame(number, width=width, height=height, labels=tuple(labels), seed=11)
        frames.append(SyntheticFrame(frame.name, width, height, frame.jpeg, []))
    return cvat.add_task("bench", labels=labels, frames=frames, segment_size=max(1, -(-count // jobs)))


def run_once(cvat, model_uri: str, task_id: int, threshold: float, batch_size: int, workdir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVAT_")}
    env |= {"CVAT_ACCESS_TOKEN": cvat.DEFAULT_TOKEN, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    result_file = workdir / f"result-{task_id}.json"
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-m", "airflow_cvat.trainer.preannotate", "--model-uri", model_uri,
         "--cvat-url", cvat.url, "--task-id", str(task_id), "--threshold", str(threshold),
         "--batch-size", str(batch_size), "--result-file", str(result_file)],
        env=env, cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(f"the command failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
    summary = json.loads(result_file.read_text())
    loop = summary["seconds_total"]
    return {
        "threshold": threshold,
        "frames": summary["frames"],
        "shapes": summary["shapes"],
        "shapes_per_frame": round(summary["shapes"] / max(summary["frames"], 1), 1),
        "uploads": summary["uploads"],
        "frames_per_s": round(summary["frames"] / loop, 2),
        "loop_s": round(loop, 2),
        "inference_s": summary["seconds_inference"],
        "upload_s": summary["seconds_upload"],
        "upload_share": round(summary["seconds_upload"] / loop, 3),
        "inference_share": round(summary["seconds_inference"] / loop, 3),
        "download_s_summed_over_threads": summary["seconds_download"],
        "startup_s": round(wall - loop, 2),
        "wall_s": round(wall, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-uri", help="a published version folder, model folder or LATEST")
    parser.add_argument("--train", action="store_true", help="train a small model first")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--train-dir", help="keep (and reuse) the trained model here")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--thresholds", default="0.0,0.3", help="comma-separated; 0 uploads everything")
    options = parser.parse_args()
    if not options.model_uri and not options.train:
        parser.error("give --model-uri, or --train to train a tiny model first")

    from tests.cvat_double import CVATDouble

    with tempfile.TemporaryDirectory(prefix="bench-preannotate-") as scratch, CVATDouble() as cvat:
        workdir = Path(scratch)
        if not options.model_uri:
            started = time.perf_counter()
            options.model_uri = train_small(Path(options.train_dir or workdir), options.steps)
            print(f"trained {options.model_uri} in {time.perf_counter() - started:.0f} s")
        model_uri = options.model_uri
        labels = model_labels(model_uri)
        print(f"model {model_uri} ({', '.join(labels)}); {options.frames} frames of "
              f"{options.width}x{options.height} in {options.jobs} new jobs; batch {options.batch_size}; "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")  # fmt: skip
        for threshold in (float(t) for t in options.thresholds.split(",")):
            task_id = new_task(cvat, labels, options.frames, options.width, options.height, options.jobs)
            print(json.dumps(run_once(cvat, model_uri, task_id, threshold, options.batch_size, workdir)))


if __name__ == "__main__":
    main()
