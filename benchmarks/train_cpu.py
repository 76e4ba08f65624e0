"""Training speed per model family on this machine (CPU unless a GPU is visible).

Run by hand, not in CI::

    .venv/bin/python benchmarks/train_cpu.py [--models ssd-mobilenet-v2-coco,frcnn-res50-coco]
        [--size 128] [--steps 60] [--batch 4] [--num-clones 1]

For each model: prepares 200 generated images once, then trains ``--steps`` steps with the
trainer's own loop and reports steady-state steps/s and images/s (the first loop, which
includes tracing, is excluded), and peak resident memory of the process.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from airflow_cvat.arguments import parse_arguments  # noqa: E402
from airflow_cvat.catalog import load_catalog  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="ssd-mobilenet-v2-coco,frcnn-res50-coco,mask-rcnn")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--num-clones", type=int, default=1)
    parser.add_argument("--images", type=int, default=200)
    options = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from airflow_cvat.trainer import families, prepare, runtime, train
    from airflow_cvat.trainer.storage import Workspace
    from demo_data.datasets import make_dataset

    strategy, use_gpu = runtime.configure(options.num_clones)
    root = Path(tempfile.mkdtemp(prefix="bench-train-"))
    make_dataset(root / "ds", options.images, size=options.size)
    report = prepare.prepare(str(root / "ds"), root / "data", with_masks=True).to_dict()
    catalog = load_catalog()
    for name in options.models.split(","):
        spec = catalog[name]
        text = f"batch_size={options.batch};input_size={options.size};num_clones={options.num_clones}"
        if spec.family == "mask_rcnn":
            text += ";stage3_epochs=1;stage1_epochs=0;stage2_epochs=0"
        args = parse_arguments(name, text, num_images=report["train_images"], catalog=catalog)
        if spec.family != "mask_rcnn":
            args = parse_arguments(name, text + f";epochs={options.steps}", catalog=catalog)
        else:
            args = args.__class__(
                **{**args.__dict__, "steps": options.steps, "stage_steps": (0, 0, options.steps)}
            )
        workspace = Workspace(str(root / "runs" / name))
        (workspace.path("data")).symlink_to(root / "data")
        data = families.DataPaths(str(root / "data" / "train-*"), str(root / "data" / "val-*"))
        config = families.build_config(spec, args, len(report["labels"]), data, use_gpu=use_gpu)
        timings: list[tuple[int, float]] = []
        original = train.Progress.update

        def record(self, step, n, elapsed, values, stage, _t=timings, _o=original):
            _t.append((n, elapsed))
            _o(self, step, n, elapsed, values, stage)

        train.Progress.update = record
        started = time.monotonic()
        train.train(workspace, config, args, strategy, use_gpu)
        train.Progress.update = original
        steady = timings[1:] or timings
        steps = sum(n for n, _ in steady)
        seconds = sum(t for _, t in steady)
        print(
            json.dumps(
                {
                    "model": name,
                    "size": options.size,
                    "batch": options.batch,
                    "replicas": strategy.num_replicas_in_sync,
                    "steps_per_s": round(steps / seconds, 2),
                    "images_per_s": round(steps * options.batch / seconds, 1),
                    "wall_s": round(time.monotonic() - started, 1),
                    "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                    "gpu": use_gpu,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
