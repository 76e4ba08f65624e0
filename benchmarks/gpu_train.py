"""Training speed per catalogue family on a GPU: steps/s, images/s, and how much the input stalls.

Run by hand on a machine with an NVIDIA GPU (the `device` tool), not in CI::

    .venv/bin/python benchmarks/gpu_train.py [--models ssd-mobilenet-v2-coco,frcnn-res50-coco,mask-rcnn]
        [--steps 50] [--images 256] [--num-clones 1] [--size N] [--batch N]

Each model runs at its catalogue input size and default batch (``--size``/``--batch`` override
both), with the trainer's own precision policy (float16 mixed precision on a GPU) and its own
distributed loop, on generated images written as a CVAT export and prepared by the trainer.

Three timings per model, each after a warm-up that compiles the graphs:

* ``real``: the training loop fed by the Model Garden input pipeline (decode, augment, batch);
* ``compute``: the same loop fed one cached batch over and over (no decoding at all);
* ``input``: the input pipeline alone, iterated with no training.

``input_stall`` = 1 - compute/real step time: the share of a real step spent waiting for data.
Near 0 means the GPU is the bottleneck; large values mean more CPU workers or a faster input
format would pay. On a CPU-only machine it runs too (slowly) and says ``"gpu": false``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from airflow_cvat.arguments import parse_arguments  # noqa: E402
from airflow_cvat.catalog import load_catalog  # noqa: E402

DEFAULT_MODELS = "ssd-mobilenet-v2-coco,frcnn-res50-coco,frcnn-res101-coco,mask-rcnn"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--steps", type=int, default=50, help="timed steps per measurement")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--num-clones", type=int, default=1)
    parser.add_argument("--size", type=int, default=None, help="default: the catalogue's input size")
    parser.add_argument("--batch", type=int, default=None, help="default: the catalogue's batch size")
    options = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from airflow_cvat.trainer import runtime

    strategy, use_gpu = runtime.configure(options.num_clones)
    catalog = load_catalog()
    scratch = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    for name in options.models.split(","):
        spec = catalog[name]
        size = options.size or spec.input_size
        batch = options.batch or spec.batch_size * options.num_clones
        data = _prepared(scratch, size, options.images)
        figures = measure(name, size, batch, options.steps, data, strategy, use_gpu, catalog)
        print(json.dumps(figures), flush=True)


def _prepared(scratch: Path, size: int, images: int):
    """Generated images at ``size`` px, exported as CVAT does and prepared by the trainer (cached)."""
    from airflow_cvat.trainer import families, prepare
    from demo_data.datasets import make_dataset

    folder = scratch / f"data-{size}"
    if not folder.exists():
        make_dataset(scratch / f"export-{size}", images, size=size)
        prepare.prepare(str(scratch / f"export-{size}"), folder, with_masks=True)
    return families.DataPaths(str(folder / "train-*"), str(folder / "val-*"))


def measure(name, size, batch, steps, data, strategy, use_gpu, catalog) -> dict:
    from airflow_cvat.trainer import families, train

    spec = catalog[name]
    text = f"batch_size={batch};input_size={size};epochs={steps * 3}"
    if spec.family == "mask_rcnn":
        text = f"batch_size={batch};input_size={size};stage1_epochs=0;stage2_epochs=0;stage3_epochs=1"
    args = parse_arguments(name, text, num_images=steps * 3 * batch, catalog=catalog)
    args = replace(args, steps=steps * 3, stage_steps=None)
    config = families.build_config(spec, args, 3, data, use_gpu=use_gpu)
    with strategy.scope():
        task = families.build_task(config)
        model = task.build_model()
        optimizer = train.make_optimizer(args, use_gpu)
        optimizer.build(model.trainable_variables)
        metrics = task.build_metrics(training=True)
    loop = train._make_loop(strategy, task, model, optimizer, metrics)

    def inputs(context):
        return task.build_inputs(config.task.train_data, context)

    def cached(context):
        return task.build_inputs(config.task.train_data, context).take(1).cache().repeat()

    def sync() -> None:  # GPU work is asynchronous: reading the step waits for it to finish
        optimizer.iterations.numpy()

    real = _time_loop(loop, iter(strategy.distribute_datasets_from_function(inputs)), steps, sync)
    compute = _time_loop(loop, iter(strategy.distribute_datasets_from_function(cached)), steps, sync)
    pipeline = iter(task.build_inputs(config.task.train_data))
    next(pipeline)
    began = time.perf_counter()
    for _ in range(steps):
        next(pipeline)
    input_only = time.perf_counter() - began
    return {
        "model": name,
        "size": size,
        "batch": batch,
        "replicas": strategy.num_replicas_in_sync,
        "precision": "mixed_float16" if use_gpu else "float32",
        "steps_per_s": round(steps / real, 2),
        "images_per_s": round(steps * batch / real, 1),
        "compute_only_steps_per_s": round(steps / compute, 2),
        "input_only_batches_per_s": round(steps / input_only, 2),
        "input_stall": round(max(0.0, 1 - compute / real), 3),
        "gpu": use_gpu,
    }


def _time_loop(loop, iterator, steps: int, sync) -> float:
    """Seconds for ``steps`` steps after a warm-up call that traces and compiles the loop."""
    import tensorflow as tf

    loop(iterator, tf.constant(min(5, steps)))
    sync()
    began = time.perf_counter()
    loop(iterator, tf.constant(steps))
    sync()
    return time.perf_counter() - began


if __name__ == "__main__":
    main()
