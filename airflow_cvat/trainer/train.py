"""train: fine-tune a Model Garden detector with a plain distributed loop, resumable.

Why our own loop and not the Model Garden's ``train_lib``: we need the three-stage schedule of
Mask R-CNN (which changes what is trainable mid-run), a progress line users can read in the
Airflow log, and checkpoints pushed to object storage as they are written. The loop still uses
the Model Garden task's own ``train_step`` (losses, loss scaling, per-replica scaling) and
input pipeline, so behaviour matches the Model Garden's.

Resume: checkpoints hold the model and the optimizer (whose ``iterations`` is the global step)
and are written every ``checkpoint_steps``. A re-run with the same output restores the latest
one and continues; the step count, the learning-rate schedule and the stage follow from it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass

import tensorflow as tf
import tf_keras

from airflow_cvat.arguments import TrainingArguments
from airflow_cvat.trainer import evaluate, families, pretrained
from airflow_cvat.trainer.storage import Workspace

log = logging.getLogger(__name__)

WARMUP_FRACTION = 0.05
MAX_WARMUP_STEPS = 500
STAGE3_LR_FACTOR = 0.1
LOOP_SECONDS = 10.0
"""Aim for one progress line and one summary every this many seconds."""


class StagedCosine(tf_keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up, then cosine decay to zero; times ``factor`` from ``drop_at`` on.

    ``drop_at`` is where Mask R-CNN's third stage (all layers) starts, at a tenth of the rate.
    """

    def __init__(self, peak: float, total: int, warmup: int, drop_at: int | None = None, factor=1.0):
        super().__init__()
        self.peak, self.total, self.warmup = peak, max(1, total), warmup
        self.drop_at, self.factor = drop_at, factor

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.peak * (step + 1.0) / max(1, self.warmup)
        progress = tf.clip_by_value((step - self.warmup) / max(1, self.total - self.warmup), 0.0, 1.0)
        cosine = 0.5 * self.peak * (1.0 + tf.cos(math.pi * progress))
        rate = tf.where(step < self.warmup, warm, cosine)
        if self.drop_at is not None:
            rate = tf.where(step >= self.drop_at, rate * self.factor, rate)
        return rate

    def get_config(self):
        return {
            "peak": self.peak,
            "total": self.total,
            "warmup": self.warmup,
            "drop_at": self.drop_at,
            "factor": self.factor,
        }


STAGE_NAMES = {1: "heads only", 2: "backbone stage 4 and up", 3: "all layers, a tenth of the rate"}


@dataclass
class Stage:
    """A span of steps with one trainable set (1 heads, 2 stage 4 up, 3 all)."""

    number: int
    start: int
    end: int


def stages_for(args: TrainingArguments) -> list[Stage]:
    if not args.stage_steps:
        return [Stage(3, 0, args.steps)]
    spans, start = [], 0
    for number, steps in enumerate(args.stage_steps, start=1):
        if steps:
            spans.append(Stage(number, start, start + steps))
            start += steps
    return spans


def make_optimizer(args: TrainingArguments, use_gpu: bool) -> tf_keras.optimizers.Optimizer:
    drop_at = None
    if args.stage_steps and args.stage_steps[2]:
        drop_at = args.stage_steps[0] + args.stage_steps[1]
    warmup = min(MAX_WARMUP_STEPS, int(args.steps * WARMUP_FRACTION))
    schedule = StagedCosine(args.initial_learning_rate, args.steps, warmup, drop_at, STAGE3_LR_FACTOR)
    optimizer = tf_keras.optimizers.SGD(learning_rate=schedule, momentum=0.9)
    if use_gpu:
        optimizer = tf_keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer


def latest_step(checkpoint_dir) -> int:
    """The global step of the newest checkpoint in ``checkpoint_dir`` (0 when there is none)."""
    latest = tf.train.latest_checkpoint(str(checkpoint_dir))
    return int(latest.rsplit("-", 1)[1]) if latest else 0


def is_trained(workspace: Workspace, args: TrainingArguments) -> bool:
    marker = workspace.path("checkpoints", "train.json")
    if not marker.exists():
        return False
    return json.loads(marker.read_text()).get("steps") == args.steps


def train(
    workspace: Workspace,
    config,
    args: TrainingArguments,
    strategy: tf.distribute.Strategy,
    use_gpu: bool,
) -> int:
    """Train to ``args.steps`` (resuming if checkpoints exist); return the final global step."""
    checkpoint_dir = workspace.pull("checkpoints")
    with strategy.scope():
        task = families.build_task(config)
        model = task.build_model()
        optimizer = make_optimizer(args, use_gpu)
        # Build the optimizer on every variable now, while all are trainable. Why: a Keras
        # optimizer fixes its variable list at its first step, so Mask R-CNN's stage 2 (which
        # unfreezes the backbone) would otherwise fail with "cannot recognize variable".
        optimizer.build(model.trainable_variables)
        metrics = task.build_metrics(training=True)
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
        manager = tf.train.CheckpointManager(
            checkpoint,
            str(checkpoint_dir),
            max_to_keep=3,
            step_counter=optimizer.iterations,
            checkpoint_interval=args.checkpoint_steps,
        )
        if manager.latest_checkpoint:
            checkpoint.restore(manager.latest_checkpoint).expect_partial()
            log.info("resuming from %s", manager.latest_checkpoint)
        else:
            # Backbone (+ decoder) from the base weights: checked against the model, restored,
            # and compared value by value (pretrained.py); recorded for the result and resumes.
            loaded = pretrained.initialize(model, config.task)
            workspace.write_text(json.dumps(loaded, indent=2), pretrained.REPORT)
    start = int(optimizer.iterations.numpy())
    dataset = strategy.distribute_datasets_from_function(
        lambda context: task.build_inputs(config.task.train_data, context)
    )
    iterator = iter(dataset)
    writer = tf.summary.create_file_writer(str(workspace.path("tensorboard", "train")))
    progress = Progress(args.steps, start, staged=bool(args.stage_steps))
    evaluation = evaluate.DuringTraining(workspace, config, model, args.eval_steps, args.steps)
    for stage in stages_for(args):
        if stage.end <= start:
            continue
        families.stage_trainable(model, args.family, stage.number)
        if args.stage_steps:
            log.info(
                "stage %d/3 (%s): steps %d to %d, %d of %d variables trainable",
                stage.number,
                STAGE_NAMES[stage.number],
                max(stage.start, start),
                stage.end,
                len(model.trainable_variables),
                len(model.variables),
            )
        loop = _make_loop(strategy, task, model, optimizer, metrics)
        _run_stage(
            stage, loop, iterator, optimizer, metrics, manager, workspace, writer, progress, evaluation
        )
    manager.save(checkpoint_number=optimizer.iterations, check_interval=False)
    workspace.push("checkpoints")
    workspace.write_text(json.dumps({"steps": args.steps}), "checkpoints", "train.json")
    workspace.push("tensorboard")
    return int(optimizer.iterations.numpy())


def _make_loop(strategy, task, model, optimizer, metrics):
    """A tf.function running ``n`` steps per call (fewer Python round trips; retraced per stage)."""

    def step(inputs):
        return task.train_step(inputs, model, optimizer, metrics=metrics)

    @tf.function
    def loop(iterator, n):
        for _ in tf.range(n):
            strategy.run(step, args=(next(iterator),))

    return loop


def _run_stage(
    stage, loop, iterator, optimizer, metrics, manager, workspace, writer, progress, evaluation
) -> None:
    chunk = 10
    while (done := int(optimizer.iterations.numpy())) < stage.end:
        n = min(chunk, stage.end - done, evaluation.steps_to_next(done))
        for metric in metrics:
            metric.reset_state()
        began = time.monotonic()
        loop(iterator, tf.constant(n))
        elapsed = time.monotonic() - began
        step = int(optimizer.iterations.numpy())
        values = {m.name: float(m.result()) for m in metrics}
        rate = _current_rate(optimizer)
        progress.update(step, n, elapsed, values, stage.number)
        with writer.as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(name, value)
            tf.summary.scalar("learning_rate", rate)
            tf.summary.scalar("steps_per_second", n / max(elapsed, 1e-9))
        if not all(map(math.isfinite, values.values())):
            raise FloatingPointError(
                f"the loss became {values} at step {step}; lower initial_learning_rate and retry"
            )
        if manager.save(checkpoint_number=optimizer.iterations):
            workspace.push("checkpoints")
        evaluation.after(step)
        # Size the next call so that each takes about LOOP_SECONDS (at most 1000 steps).
        chunk = int(min(1000, max(1, n * LOOP_SECONDS / max(elapsed, 1e-3))))
        chunk = min(chunk, manager.checkpoint_interval or chunk)


def _current_rate(optimizer) -> float:
    rate = optimizer.learning_rate
    if isinstance(rate, tf_keras.optimizers.schedules.LearningRateSchedule):
        rate = rate(optimizer.iterations)
    return float(tf.convert_to_tensor(rate).numpy())  # also reads a MirroredVariable


class Progress:
    """The progress line: ``step 120/600 loss 0.842 (cls 0.51 box 0.006) 14.1 steps/s ETA 0:00:34``."""

    def __init__(self, total: int, start: int, staged: bool = False) -> None:
        self.total, self.start, self.began, self.staged = total, start, time.monotonic(), staged

    def update(self, step: int, n: int, elapsed: float, values: dict[str, float], stage: int) -> None:
        rate = n / max(elapsed, 1e-9)
        eta = (self.total - step) / rate if rate else float("inf")
        details = " ".join(
            f"{k.removesuffix('_loss')} {v:.4g}" for k, v in values.items() if k != "total_loss"
        )
        staged = f" stage {stage}" if self.staged else ""
        log.info(
            "step %d/%d%s loss %.4f (%s) %.2f steps/s ETA %s",
            step,
            self.total,
            staged,
            values.get("total_loss", float("nan")),
            details,
            rate,
            _clock(eta),
        )


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
