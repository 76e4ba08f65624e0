"""Every catalogue model trains, evaluates and exports on CPU: a few steps on small generated data.

Each run is the real command line (``python -m airflow_cvat.trainer train``, in a subprocess)
on the same generated export (16 images of 64 px; 8 validation images so every class is in
the validation split): prepare -> the fewest training steps (one; one per stage for Mask R-CNN)
at the smallest input size the backbone takes -> COCO evaluation (metrics.json with AP, AP50,
AP75, per-class AP; mask AP for Mask R-CNN) -> a SavedModel that the trainer reloads and runs
once (``export_check`` in the result), which the test loads again. ``eval_steps=0``: no
evaluation during so short a run, only the final one (each evaluation graph costs a trace).
ssd-mobilenet-v2-coco is the session's shared ssd run (``ssd_run``, tests/fixtures/publish.py),
which also passes the quality test; it is not trained a second time here.

* frcnn-nas-coco needs num_clones>=2: it runs with num_clones=2, i.e. MirroredStrategy over two
  logical CPU devices, the CI stand-in for two GPUs.
* mask-rcnn runs its three-stage schedule (one pass of one batch each); the log shows each
  stage starting with more trainable variables than the one before.

Nothing here checks accuracy (a few steps learn nothing; tests/test_trainer_quality.py does).

Almost all of the time is TensorFlow building and compiling graphs (train step, Mask R-CNN's
three stages, evaluation, serving), not training; so the runs switch Grappler off
(AIRFLOW_CVAT_GRAPH_OPTIMIZER=0), which cut the Mask R-CNN run from 309 s to 211 s.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytestmark = pytest.mark.slow  # after the light tests (tests/conftest.py)

from demo_data.datasets import make_dataset  # noqa: E402
from tests.once import once_per_run  # noqa: E402
from tests.trainer_helpers import run_trainer, train_argv  # noqa: E402

IMAGES, IMAGE_SIZE, VALIDATION = 16, 64, "0.5"
LABELS = ("circle", "square", "triangle")
FAST = "checkpoint_steps=1000;initial_learning_rate=0.001;eval_steps=0"
SHARED = None
"""The session's shared ssd run (``ssd_run``), trained with its own arguments."""

MODELS = {
    # name: (arguments, expected steps, minutes a CI run takes); input_size is a multiple of 64.
    # Longest first: parallel workers (pytest-xdist) take them in this order and finish together.
    # One image per replica.
    "frcnn-nas-coco": (f"epochs=1;batch_size=2;num_clones=2;input_size=64;{FAST}", 1, 5),
    # 8 training images, batch 8: one pass is 1 step, so 1 + 1 + 1.
    "mask-rcnn": (f"stage1_epochs=1;stage2_epochs=1;stage3_epochs=1;batch_size=8;input_size=64;{FAST}", 3, 4),
    # Keras's Inception-ResNet-v2 needs at least 75 px.
    "frcnn-inc-resv2-atr-coco": (f"epochs=1;batch_size=2;input_size=128;{FAST}", 1, 2.5),
    "frcnn-res101-coco": (f"epochs=1;batch_size=2;input_size=64;{FAST}", 1, 2),
    "frcnn-res50-coco": (f"epochs=1;batch_size=2;input_size=64;{FAST}", 1, 1.8),
    "frcnn-res50-lowp": (f"epochs=1;batch_size=2;input_size=64;{FAST}", 1, 1.5),
    "ssd-mobilenet-v2-coco": (SHARED, 600, 0),
}


def each_model(*names: str) -> list:
    """Parameters for a test per model: a model's tests share one worker (its run is kept there)."""
    return [
        pytest.param(
            name, marks=[pytest.mark.xdist_group(f"model-{name}"), pytest.mark.slow(minutes=MODELS[name][2])]
        )
        for name in names
    ]


def model_run(tmp_path_factory, model: str) -> tuple[Path, dict, str]:
    """The model's training run, once per test run: the test that asks first trains it, the
    model's other tests read it (they share its worker: xdist_group), so none skips for want of it."""

    def build(root: Path) -> dict:
        dataset = make_dataset(root / "dataset", IMAGES, size=IMAGE_SIZE)
        output, workdir = root / "run", root / "cwd"
        workdir.mkdir()
        code, result, stderr = run_trainer(
            *train_argv(dataset, output, model, MODELS[model][0], "--validation-fraction", VALIDATION),
            env={"AIRFLOW_CVAT_GRAPH_OPTIMIZER": "0"},  # compiling, not running, dominates a few steps
            cwd=workdir,
        )
        # Nothing lands in the working directory (Mask R-CNN's evaluator once wrote its ground
        # truth there as annotation.json, and reused it for the next run in that directory).
        assert not list(workdir.iterdir())
        (root / "train.log").write_text(stderr)  # for a failure's post-mortem
        assert code == 0, stderr[-6000:]
        return {"output": str(output), "result": result, "log": stderr}

    run = once_per_run(tmp_path_factory, f"model-{model}", build)
    return Path(run["output"]), run["result"], run["log"]


def _shared_ssd_run(request):
    shared = request.getfixturevalue("ssd_run")  # only when asked for: it trains on first use
    assert not list(shared.workdir.iterdir())  # nothing landed in its working directory either
    return shared.folder, shared.result, shared.log


@pytest.mark.parametrize("model", each_model(*MODELS))
def test_model_trains_evaluates_and_exports(request, tmp_path_factory, model):
    arguments, steps, _ = MODELS[model]
    shared = arguments is SHARED
    output, result, stderr = _shared_ssd_run(request) if shared else model_run(tmp_path_factory, model)
    assert result["status"] == "ok" and result["model"] == model
    assert result["steps"] == steps and result["arguments"]["steps"] == steps
    assert "steps/s ETA" in stderr

    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["step"] == steps
    for key in ("AP", "AP50", "AP75"):
        assert isinstance(metrics[key], float) and 0.0 <= metrics[key] <= 1.0, (key, metrics)
    assert set(metrics["per_class"]) == set(LABELS)
    mask = model == "mask-rcnn"
    for name in LABELS:  # every class is in the validation split, so each has a number
        for key in ("AP", "AP50", "AP75") + (("mask_AP", "mask_AP50", "mask_AP75") if mask else ()):
            assert isinstance(metrics["per_class"][name][key], float), (name, key, metrics["per_class"])
    if mask:
        for key in ("mask_AP", "mask_AP50", "mask_AP75"):
            assert isinstance(metrics[key], float), (key, metrics)
    else:
        assert "mask_AP" not in metrics

    check = result["export_check"]
    expected = {"detection_boxes", "detection_classes", "detection_scores", "num_detections"}
    assert set(check["outputs"]) == expected | ({"detection_masks"} if mask else set())
    assert (output / "classes.csv").read_text() == "id,name\n1,circle\n2,square\n3,triangle\n"
    assert list((output / "tensorboard" / "eval").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("model", each_model("frcnn-res50-lowp", "mask-rcnn"))
def test_saved_model_reloads_and_predicts_here(tmp_path_factory, model):
    """Load the export in this process and run a frame of another size (batch of two)."""
    output, _, _ = model_run(tmp_path_factory, model)
    serve = tf.saved_model.load(str(output / "saved_model")).signatures["serving_default"]
    images = np.random.default_rng(1).integers(0, 255, size=(2, 50, 90, 3), dtype=np.uint8)
    out = {k: v.numpy() for k, v in serve(images=tf.constant(images)).items()}
    assert out["detection_boxes"].shape[0] == 2 and out["detection_boxes"].shape[2] == 4
    assert out["detection_boxes"].min() >= 0 and out["detection_boxes"].max() <= 1
    assert out["detection_classes"].dtype == np.int32
    if model == "mask-rcnn":
        assert out["detection_masks"].shape[:2] == out["detection_boxes"].shape[:2]


@pytest.mark.xdist_group("model-frcnn-nas-coco")
def test_nas_ran_on_two_replicas(tmp_path_factory):
    _, result, stderr = model_run(tmp_path_factory, "frcnn-nas-coco")
    assert result["num_replicas"] == 2 and result["arguments"]["num_clones"] == 2
    assert "replicas: 2 on /cpu:0, /cpu:1" in stderr


@pytest.mark.xdist_group("model-mask-rcnn")
def test_mask_rcnn_ran_three_stages(tmp_path_factory):
    _, result, stderr = model_run(tmp_path_factory, "mask-rcnn")
    assert result["arguments"]["stage_steps"] == [1, 1, 1]
    import re

    starts = re.findall(
        r"stage (\d)/3 \([^)]*\): steps (\d+) to (\d+), (\d+) of (\d+) variables trainable", stderr
    )
    assert [(int(s), int(a), int(b)) for s, a, b, _, _ in starts] == [(1, 0, 1), (2, 1, 2), (3, 2, 3)]
    trainable = [int(t) for *_, t, _ in starts]
    assert trainable[0] < trainable[1] < trainable[2], starts  # heads, then stage 4 up, then all
    for stage in (1, 2, 3):
        assert f"step {stage}/3 stage {stage} loss" in stderr
