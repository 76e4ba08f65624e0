"""evaluate: COCO AP, AP50, AP75 (and mask AP for Mask R-CNN), per class, on the validation split.

Uses the Model Garden task's own ``validation_step`` and COCO evaluator (pycocotools), with the
ground truth taken from the validation TFRecords (no annotation file), so the numbers are the
standard COCO ones. Runs on one device: the validation split is small, and a single-device
evaluation gives the same numbers however many replicas trained.

During training, ``DuringTraining`` evaluates the live model every ``eval_steps`` steps, so the
report shows how AP grew, not one point at the end. Each evaluation is appended to the
``history`` list of metrics.json (step, AP, AP50, AP75, seconds) and to the TensorBoard
``eval`` events the report's plot reads; the final evaluation closes the list. A resumed run
keeps the points it already has.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import shutil
import tempfile
import time
import weakref

import numpy as np
import tensorflow as tf

from airflow_cvat.trainer import families
from airflow_cvat.trainer.storage import Workspace

log = logging.getLogger(__name__)

HEADLINE = ("AP", "AP50", "AP75", "APs", "APm", "APl", "ARmax1", "ARmax10", "ARmax100")
_PER_CLASS = {
    "Precision mAP ByCategory": "AP",
    "Precision mAP ByCategory@50IoU": "AP50",
    "Precision mAP ByCategory@75IoU": "AP75",
}


def restore_model(config, checkpoint_dir: str, logging_dir: str | None = None):
    """Build the model for ``config`` and load the newest training checkpoint into it."""
    task = families.build_task(config, logging_dir)
    model = task.build_model()
    latest = tf.train.latest_checkpoint(checkpoint_dir)
    if latest is None:
        raise FileNotFoundError(f"no checkpoint in {checkpoint_dir}; run train first")
    tf.train.Checkpoint(model=model).read(latest).expect_partial()
    return task, model, int(latest.rsplit("-", 1)[1])


def evaluate(workspace: Workspace, config, labels: list[dict]) -> dict:
    """Evaluate the newest checkpoint; write metrics.json and TensorBoard events; return metrics."""
    scratch = tempfile.mkdtemp(prefix="cvat-eval-")  # fresh: the evaluator reuses what it finds
    try:
        task, model, step = restore_model(config, str(workspace.pull("checkpoints")), scratch)
        task.build_metrics(training=False)  # creates the task's COCO evaluator
        began = time.monotonic()
        metrics = _evaluate(task, model, config, labels)
        seconds = time.monotonic() - began
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    metrics["step"] = step
    earlier = [point for point in read_history(workspace) if point["step"] < step]
    metrics["history"] = [*earlier, history_point(metrics, step, seconds)]
    _record(workspace, metrics, step)
    log.info("evaluation at step %d: AP %s AP50 %s AP75 %s", step, *(metrics.get(k) for k in HEADLINE[:3]))
    return metrics


def _evaluate(task, model, config, labels: list[dict], step_fn=None, dataset=None) -> dict:
    """One pass over the validation split with the task's own step and COCO evaluator.

    ``step_fn`` and ``dataset``: a traced validation step and the split, when the caller
    evaluates more than once (tracing again would cost seconds per evaluation).
    """
    dataset = dataset if dataset is not None else task.build_inputs(config.task.validation_data)
    step_fn = step_fn or tf.function(lambda inputs: task.validation_step(inputs, model))
    state = None
    for inputs in dataset:
        state = task.aggregate_logs(state, step_fn(inputs))
    with per_class_cocoeval():
        raw = task.reduce_aggregated_logs(state)
    return summarize(raw, labels, with_masks=_has_masks(config))


def history_point(metrics: dict, step: int, seconds: float) -> dict:
    """One point of the AP curve, with what the evaluation cost."""
    return {"step": step, **{k: metrics.get(k) for k in HEADLINE[:3]}, "seconds": round(seconds, 2)}


def read_history(workspace: Workspace) -> list[dict]:
    """The evaluations metrics.json records so far (a resumed run keeps them)."""
    path = workspace.pull("metrics.json")
    if not path.exists():
        return []
    return list(json.loads(path.read_text()).get("history") or [])


def _record(workspace: Workspace, metrics: dict, step: int) -> None:
    """metrics.json, and the headline numbers as TensorBoard ``eval`` scalars at ``step``."""
    writer = tf.summary.create_file_writer(str(workspace.path("tensorboard", "eval")))
    with writer.as_default(step=step):
        for key in HEADLINE:
            if metrics.get(key) is not None:
                tf.summary.scalar(f"coco/{key}", metrics[key])
    writer.flush()
    writer.close()
    workspace.write_text(json.dumps(metrics, indent=2, sort_keys=True), "metrics.json")
    workspace.push("tensorboard")


class DuringTraining:
    """Evaluates the model being trained every ``every`` steps (``eval_steps``; 0: never).

    Why the live model and not a restored checkpoint: restoring builds a second model (memory
    and seconds); the live weights are the ones training just reached. The validation step is
    traced once and reused, so each evaluation costs one pass over the validation split. The
    last step is left to ``evaluate``, which also writes the per-class numbers.
    """

    def __init__(self, workspace: Workspace, config, model, every: int, total: int) -> None:
        self.workspace, self.config, self.model = workspace, config, model
        self.every, self.total = every, total
        self.history = read_history(workspace)
        self._task = self._step_fn = self._dataset = None

    def steps_to_next(self, step: int) -> int:
        """Steps until the next evaluation, so a training call stops exactly there."""
        return self.every - step % self.every if self.every else self.total - step

    def after(self, step: int) -> None:
        """Evaluate if ``step`` is an evaluation step not evaluated yet (a resumed run skips it)."""
        if not self.every or step % self.every or step >= self.total:
            return
        if any(point["step"] == step for point in self.history):
            return
        began = time.monotonic()
        metrics = _evaluate(self._eval_task(), self.model, self.config, [], self._step_fn, self._dataset)
        seconds = time.monotonic() - began
        self.history = [p for p in self.history if p["step"] < step] + [history_point(metrics, step, seconds)]
        metrics.update(step=step, history=self.history)
        _record(self.workspace, metrics, step)
        log.info("evaluation at step %d: AP50 %s (%.1f s)", step, metrics.get("AP50"), seconds)

    def _eval_task(self):
        """A task of its own (its COCO evaluator), its ground truth in a scratch folder."""
        if self._task is None:
            scratch = tempfile.mkdtemp(prefix="cvat-eval-")
            weakref.finalize(self, shutil.rmtree, scratch, True)
            task = families.build_task(self.config, scratch)
            task.build_metrics(training=False)
            model = self.model
            self._step_fn = tf.function(lambda inputs: task.validation_step(inputs, model))
            self._dataset = task.build_inputs(self.config.task.validation_data)
            self._task = task
        return self._task


@contextlib.contextmanager
def per_class_cocoeval():
    """Make the Model Garden's COCO evaluator report per-class AP.

    Its per-category code reads ``COCOeval.category_stats``, which only a patched pycocotools
    has; stock pycocotools does not, so per-class metrics come out empty. We substitute a
    COCOeval that computes the first three rows (AP, AP50, AP75 per class) from its own
    accumulated precision array, for the duration of one evaluation.
    """
    from official.vision.evaluation import coco_evaluator

    original = coco_evaluator.cocoeval.COCOeval

    class PerClassCOCOeval(original):
        def summarize(self):
            super().summarize()
            precision = self.eval["precision"]  # [iou, recall, class, area, max_dets]
            stats = -np.ones((12, precision.shape[2]), dtype=np.float32)
            for row, iou in ((0, None), (1, 0), (2, 5)):  # all IoUs, IoU 0.5, IoU 0.75
                chosen = precision if iou is None else precision[iou : iou + 1]
                for k in range(precision.shape[2]):
                    values = chosen[:, :, k, 0, -1]
                    values = values[values > -1]
                    stats[row, k] = values.mean() if values.size else -1.0
            self.category_stats = stats

    coco_evaluator.cocoeval.COCOeval = PerClassCOCOeval
    try:
        yield
    finally:
        coco_evaluator.cocoeval.COCOeval = original


def _has_masks(config) -> bool:
    return bool(getattr(config.task.model, "include_mask", False))


def summarize(raw: dict, labels: list[dict], *, with_masks: bool) -> dict:
    """The evaluator's flat dict -> headline metrics and ``per_class`` keyed by label name.

    COCO gives -1 for a class with no ground truth in the split; we report those as None.
    """

    def number(value) -> float | None:
        value = float(value)
        return None if value < 0 or not math.isfinite(value) else round(value, 5)

    metrics: dict = {key: number(raw[key]) for key in HEADLINE if key in raw}
    if with_masks:
        for key in ("AP", "AP50", "AP75"):
            if f"mask_{key}" in raw:
                metrics[f"mask_{key}"] = number(raw[f"mask_{key}"])
    names = {int(entry["id"]): entry["name"] for entry in labels}
    kinds = [*_PER_CLASS.values()] + ([f"mask_{k}" for k in _PER_CLASS.values()] if with_masks else [])
    # A class absent from the validation split gets None (the evaluator leaves it out entirely).
    per_class: dict[str, dict] = {name: dict.fromkeys(kinds) for name in names.values()}
    pattern = re.compile(r"^(?P<prefix>mask )?(?P<kind>Precision mAP ByCategory(?:@\d+IoU)?)/(?P<id>\d+)$")
    for key, value in raw.items():
        match = pattern.match(key)
        if not match or match["kind"] not in _PER_CLASS or int(match["id"]) not in names:
            continue
        short = ("mask_" if match["prefix"] else "") + _PER_CLASS[match["kind"]]
        per_class[names[int(match["id"])]][short] = number(value)
    metrics["per_class"] = per_class
    return metrics


def is_evaluated(workspace: Workspace, step: int) -> dict | None:
    path = workspace.pull("metrics.json")
    if not path.exists():
        return None
    metrics = json.loads(path.read_text())
    return metrics if metrics.get("step") == step else None


# ---------------------------------------------------------------------------------------------
# The Test subset
# ---------------------------------------------------------------------------------------------

TEST_FILES = "test-*.tfrecord"
"""The Test split prepare writes apart (``prepare.SPLITS``); never read by training."""


def is_test_evaluated(workspace: Workspace, step: int) -> dict | None:
    """metrics.json's ``test`` block when it was computed at ``step`` (the rule of ``is_evaluated``)."""
    path = workspace.pull("metrics.json")
    if not path.exists():
        return None
    test = json.loads(path.read_text()).get("test")
    return test if test and test.get("step") == step else None


def evaluate_test(workspace: Workspace, config, labels: list[dict], images: int) -> dict:
    """Evaluate the newest checkpoint on the Test split; add it to metrics.json as ``test``.

    Why apart from ``evaluate``: Validation steers the run (the AP curve people read, the quality
    gate that moves LATEST), so its AP is what was chosen on. Test was neither trained on nor
    looked at, so its AP is the honest estimate of how the model does on new images. Same task,
    evaluator and summary as Validation; only the input differs (and with it the ground truth the
    evaluator builds, hence the fresh scratch folder). ``images``: how many prepare wrote, checked
    against how many were evaluated. Call after ``evaluate``, which rewrites metrics.json.
    """
    test_config = config.replace(
        task={"validation_data": {"input_path": str(workspace.path("data", TEST_FILES))}}
    )
    scratch = tempfile.mkdtemp(prefix="cvat-eval-test-")
    try:
        task, model, step = restore_model(test_config, str(workspace.pull("checkpoints")), scratch)
        task.build_metrics(training=False)
        dataset = _Counted(task.build_inputs(test_config.task.validation_data))
        began = time.monotonic()
        test = _evaluate(task, model, test_config, labels, dataset=dataset)
        seconds = time.monotonic() - began
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if dataset.images != images:
        raise RuntimeError(f"the Test split has {images} images but {dataset.images} were evaluated")
    test.update(step=step, images=images, seconds=round(seconds, 2))
    metrics = json.loads(workspace.pull("metrics.json").read_text())  # what evaluate wrote
    metrics["test"] = test
    workspace.write_text(json.dumps(metrics, indent=2, sort_keys=True), "metrics.json")
    log.info(
        "test evaluation at step %d on %d images: AP %s AP50 %s AP75 %s",
        step,
        images,
        *(test.get(k) for k in HEADLINE[:3]),
    )
    return test


class _Counted:
    """A dataset that counts the images it yields, so the record says what was really evaluated."""

    def __init__(self, dataset) -> None:
        self.dataset, self.images = dataset, 0

    def __iter__(self):
        for inputs in self.dataset:
            self.images += int(inputs[0].shape[0])
            yield inputs
