"""Pre-annotation against the CVAT double (real HTTP): the trainer command and PreAnnotateOperator.

Most runs call the command line's ``main`` in this process with ``FakeDetector`` (the fake
model's answer in numpy, no TensorFlow to start); three run the real command in a subprocess
with TensorFlow loading the SavedModel (a box model, a mask model, a bad input), and one the
operator in a DAG run.

The model is the hand-made SavedModel of ``tests/fixtures/publish.py`` (``fake_runs``): for any
image it answers a circle (class 1, score 0.9) at normalised ``[0.25, 0.25, 0.75, 0.75]`` and a
square (class 2, score 0.6) at ``[0.05, 0.1, 0.3, 0.4]`` (``ymin, xmin, ymax, xmax``), so pixel
coordinates are known exactly: on a 160x120 frame the circle is ``[40, 30, 120, 90]`` and the
square ``[16, 6, 64, 36]``. The ``mask`` variant adds 28x28 masks whose middle half is set.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from airflow_cvat.trainer import preannotate as pa
from airflow_cvat.trainer.preannotate import command
from demo_data.synthetic import SyntheticFrame, generate_frame
from tests.fixtures.airflow import connection_env, task_states, xcom
from tests.fixtures.publish import LABELS, FakeDetector

REPO = Path(__file__).resolve().parents[1]
W, H = 160, 120
CIRCLE = [40.0, 30.0, 120.0, 90.0]
SQUARE = [16.0, 6.0, 64.0, 36.0]


# ---- fixtures -----------------------------------------------------------------------------------


def frames(count: int, width: int = W, height: int = H) -> list[SyntheticFrame]:
    """Synthetic frames with no shapes: the task starts unannotated, tests add what they need."""
    result = []
    for number in range(count):
        frame = generate_frame(number, width=width, height=height, labels=("circle",), seed=3)
        result.append(SyntheticFrame(frame.name, width, height, frame.jpeg, []))
    return result


@pytest.fixture
def cvat(cvat_double):
    return cvat_double


def publish_model(fake_runs: Path, root: Path, kind: str = "good", name: str = "shapes") -> Path:
    """A published version folder ``{root}/models/{name}/v1`` and LATEST naming it."""
    version = root / "models" / name / "v1"
    shutil.copytree(fake_runs / kind / "saved_model", version / "saved_model")
    (version / "label_map.json").write_text(json.dumps({"labels": LABELS}))
    (version / "PUBLISHED.json").write_text(json.dumps({"version": "v1"}))
    (root / "models" / name / "LATEST").write_text(json.dumps({"version": "v1", "AP50": 0.7}))
    return version


@pytest.fixture(scope="session")
def model_root(fake_runs, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("artifacts")
    publish_model(fake_runs, root)
    publish_model(fake_runs, root, kind="mask", name="masks")
    return root


def two_job_task(cvat, labels=("circle", "square", "triangle"), count: int = 6) -> tuple[int, int, int]:
    """A task of ``count`` frames: job 1 (first half) completed with a person's box on every frame,
    job 2 (second half) state new and empty. Returns (task_id, finished job, new job)."""
    task_id = cvat.add_task("preannotate", labels=list(labels), frames=frames(count), segment_size=count // 2)
    finished, new = cvat.job_ids(task_id)
    cvat.set_job(finished, state="completed", stage="acceptance")
    label_id = label_ids(cvat, task_id)[labels[0]]
    with cvat.lock:
        task = cvat.state.tasks[task_id]
        for frame in range(count // 2):
            task.shapes.append(
                cvat.state.complete_shape(
                    {"label_id": label_id, "type": "rectangle", "frame": frame, "points": [1, 2, 30, 40]}
                )
            )
    return task_id, finished, new


def label_ids(cvat, task_id: int) -> dict[str, int]:
    with cvat.lock:
        task = cvat.state.tasks[task_id]
        return {label.name: label.id for label in cvat.state.task_labels(task)}


def run_cli(
    cvat, model_uri: str, task_id: int, *extra: str, env: dict | None = None
) -> tuple[int, dict, str]:
    """``python -m airflow_cvat.trainer.preannotate`` with a token in the environment."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CVAT_")}
    environment.update({"CVAT_ACCESS_TOKEN": cvat.DEFAULT_TOKEN, "TF_CPP_MIN_LOG_LEVEL": "3"})
    environment.update(env or {})
    completed = subprocess.run(
        [sys.executable, "-m", "airflow_cvat.trainer.preannotate", "--model-uri", model_uri,
         "--cvat-url", cvat.url, "--task-id", str(task_id), "--batch-size", "2", *extra],
        capture_output=True, text=True, timeout=300, cwd=REPO, env=environment,
    )  # fmt: skip
    lines = completed.stdout.strip().splitlines()
    assert lines, completed.stderr[-3000:]
    return completed.returncode, json.loads(lines[-1]), completed.stderr


@pytest.fixture
def annotate(model_root, monkeypatch, capsys, caplog):
    """``run_cli`` in this process: the same ``main``, the SavedModel replaced by FakeDetector."""
    masks = model_root / "models" / "masks"
    monkeypatch.setattr(
        command, "Detector", lambda path: FakeDetector(masks=Path(path).is_relative_to(masks))
    )
    caplog.set_level(logging.INFO)

    def run(
        cvat, model_uri: str, task_id: int, *extra: str, env: dict | None = None
    ) -> tuple[int, dict, str]:
        for key in [k for k in os.environ if k.startswith("CVAT_")]:
            monkeypatch.delenv(key)
        for key, value in {"CVAT_ACCESS_TOKEN": cvat.DEFAULT_TOKEN, **(env or {})}.items():
            monkeypatch.setenv(key, value)
        capsys.readouterr()
        caplog.clear()
        code = pa.main(
            [
                "--model-uri",
                model_uri,
                "--cvat-url",
                cvat.url,
                "--task-id",
                str(task_id),
                "--batch-size",
                "2",
                *extra,
            ]
        )
        lines = capsys.readouterr().out.strip().splitlines()
        assert lines, caplog.text[-3000:]
        return code, json.loads(lines[-1]), caplog.text

    return run


def auto_shapes(cvat, task_id: int) -> list[dict[str, Any]]:
    return [s for s in cvat.annotations(task_id) if s["source"] == "auto"]


# ---- the trainer command against the double -----------------------------------------------------


@pytest.mark.slow  # TensorFlow loads the SavedModel in a subprocess
def test_new_job_gets_auto_shapes_finished_job_untouched_and_rerun_adds_nothing(
    cvat, model_root, annotate
) -> None:
    task_id, finished, new = two_job_task(cvat)
    before = [s for s in cvat.annotations(task_id) if s["frame"] < 3]
    code, summary, log = run_cli(cvat, (model_root / "models" / "shapes").as_uri(), task_id)
    assert code == 0, log[-3000:]

    ids = label_ids(cvat, task_id)
    shapes = auto_shapes(cvat, task_id)
    assert sorted({s["frame"] for s in shapes}) == [3, 4, 5]  # only the new job's frames
    for frame in (3, 4, 5):
        on_frame = sorted((s for s in shapes if s["frame"] == frame), key=lambda s: s["label_id"])
        assert [(s["type"], s["label_id"], s["points"]) for s in on_frame] == [
            ("rectangle", ids["circle"], CIRCLE),
            ("rectangle", ids["square"], SQUARE),
        ]
        for s in on_frame:
            xtl, ytl, xbr, ybr = s["points"]
            assert 0 <= xtl < xbr <= W and 0 <= ytl < ybr <= H
    assert sorted({s["score"] for s in shapes}) == [0.6, 0.9]
    assert [s for s in cvat.annotations(task_id) if s["frame"] < 3] == before  # finished job untouched

    assert summary["status"] == "ok" and summary["task_id"] == task_id
    assert summary["jobs"] == [new] and summary["frames"] == 3 and summary["shapes"] == len(shapes) == 6
    assert summary["per_label"] == {"circle": 3, "square": 3}
    assert summary["skipped_labels"] == {}
    assert summary["model"].endswith("/models/shapes/v1")
    assert summary["seconds_inference"] > 0 and summary["seconds_upload"] > 0
    assert "frames/s" in log

    # Only the task annotations endpoint was written to, with action=create and source auto.
    patches = cvat.requests_to("PATCH", r"/annotations")
    assert {p.param("action") for p in patches} == {"create"}
    assert all(p.path.rstrip("/") == f"/api/tasks/{task_id}/annotations" for p in patches)

    code, again, _ = annotate(cvat, (model_root / "models" / "shapes").as_uri(), task_id)
    assert code == 0
    assert len(auto_shapes(cvat, task_id)) == 6  # no duplicates
    assert again["frames"] == 0 and again["shapes"] == 0
    assert again["skipped_frames"]["pre_annotated"] == 3


def test_replace_mode_swaps_old_auto_shapes_and_leaves_peoples_work(cvat, model_root, annotate) -> None:
    task_id, _, new = two_job_task(cvat)
    model = (model_root / "models" / "shapes" / "v1").as_uri()
    assert annotate(cvat, model, task_id)[0] == 0
    first_ids = {s["id"] for s in auto_shapes(cvat, task_id)}
    # A person draws on frame 5 of the new job: that frame is theirs from now on.
    with cvat.lock:
        cvat.state.tasks[task_id].shapes.append(
            cvat.state.complete_shape(
                {"label_id": label_ids(cvat, task_id)["square"], "type": "rectangle", "frame": 5,
                 "points": [5, 5, 20, 20], "source": "semi-auto"}
            )
        )  # fmt: skip
    code, summary, log = annotate(cvat, model, task_id, "--existing", "replace")
    assert code == 0, log[-2000:]
    shapes = auto_shapes(cvat, task_id)
    assert len(shapes) == 6 and len({s["id"] for s in shapes} & first_ids) == 2  # frame 5's kept
    assert summary["frames"] == 2 and summary["replaced_shapes"] == 4
    assert summary["skipped_frames"]["annotated"] == 1


def test_missing_label_skipped_and_counted_threshold_applies(cvat, model_root, annotate) -> None:
    task_id, _, _ = two_job_task(cvat, labels=("circle", "triangle"))
    model = (model_root / "models" / "shapes" / "LATEST").as_uri()
    code, summary, log = annotate(cvat, model, task_id)
    assert code == 0, log[-2000:]
    assert summary["per_label"] == {"circle": 3}
    assert summary["skipped_labels"] == {"square": 3}
    assert summary["missing_labels"] == ["square"]
    assert len(auto_shapes(cvat, task_id)) == 3

    task_id, _, _ = two_job_task(cvat)
    code, summary, _ = annotate(cvat, model, task_id, "--threshold", "0.7")
    assert code == 0
    assert summary["per_label"] == {"circle": 3} and summary["skipped_labels"] == {}
    assert {s["score"] for s in auto_shapes(cvat, task_id)} == {0.9}


def test_job_states_select_jobs_and_ground_truth_is_never_annotated(cvat, model_root, annotate) -> None:
    task_id, finished, new = two_job_task(cvat)
    cvat.set_job(new, state="in progress")
    cvat.add_ground_truth_job(task_id, [3, 4])
    model = (model_root / "models" / "shapes").as_uri()
    code, summary, _ = annotate(cvat, model, task_id)
    assert code == 0 and summary["jobs"] == [] and summary["frames"] == 0
    code, summary, _ = annotate(cvat, model, task_id, "--job-states", "new,in progress")
    assert code == 0 and summary["jobs"] == [new] and summary["frames"] == 3


@pytest.mark.slow  # TensorFlow loads the SavedModel in a subprocess
def test_mask_model_uploads_polygons_or_cvat_masks(cvat, model_root, annotate) -> None:
    from cvat_sdk.masks import decode_mask

    task_id, _, _ = two_job_task(cvat)
    model = (model_root / "models" / "masks").as_uri()
    code, summary, log = run_cli(cvat, model, task_id)
    assert code == 0, log[-2000:]
    polygons = auto_shapes(cvat, task_id)
    assert {s["type"] for s in polygons} == {"polygon"} and len(polygons) == 6
    circle = next(s for s in polygons if s["label_id"] == label_ids(cvat, task_id)["circle"])
    xs, ys = circle["points"][0::2], circle["points"][1::2]
    # The mask is the middle half of the box [40, 30, 120, 90]: x 60..100, y 45..75 (±1 px).
    assert min(xs) == pytest.approx(60, abs=1.5) and max(xs) == pytest.approx(100, abs=1.5)
    assert min(ys) == pytest.approx(45, abs=1.5) and max(ys) == pytest.approx(75, abs=1.5)

    task_id, _, _ = two_job_task(cvat)
    code, summary, log = annotate(cvat, model, task_id, "--masks", "mask")
    assert code == 0, log[-2000:]
    masks = auto_shapes(cvat, task_id)
    assert {s["type"] for s in masks} == {"mask"}
    circle = next(s for s in masks if s["label_id"] == label_ids(cvat, task_id)["circle"])
    bitmap = decode_mask([int(v) for v in circle["points"]], image_width=W, image_height=H)
    ys, xs = np.nonzero(bitmap)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == pytest.approx((60, 99, 45, 74), abs=1)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--threshold", "1.5"], {}, "--threshold must be within 0..1"),
        (["--job-states", "done"], {}, "--job-states"),
        ([], {"CVAT_ACCESS_TOKEN": ""}, "no CVAT credentials"),
        ([], {"CVAT_ACCESS_TOKEN": "wrong"}, "rejected the credentials (401)"),
        (["--model", "NOWHERE"], {}, "no model at"),
        (["--task", "999"], {}, "CVAT answered 404 for task 999"),
    ],
)
def test_bad_input_exits_2_with_a_clear_json_error(
    cvat, model_root, annotate, tmp_path, args, env, message
) -> None:
    task_id, _, _ = two_job_task(cvat)
    model = (model_root / "models" / "shapes").as_uri()
    if "--model" in args:
        model, args = (tmp_path / "nothing").as_uri(), []
    if "--task" in args:
        task_id, args = 999, []
    code, result, _ = annotate(cvat, model, task_id, *args, env=env)
    assert code == 2
    assert result["status"] == "error" and message in result["error"]
    assert not auto_shapes(cvat, 1)


def test_the_command_exits_2_with_a_json_error(cvat, model_root) -> None:
    """The process itself, once: bad input is exit status 2 and one JSON line."""
    task_id, _, _ = two_job_task(cvat)
    code, result, _ = run_cli(
        cvat, (model_root / "models" / "shapes").as_uri(), task_id, "--threshold", "1.5"
    )
    assert code == 2
    assert result["status"] == "error" and "--threshold must be within 0..1" in result["error"]


def test_a_failed_upload_is_checked_not_sent_twice(cvat, model_root, annotate) -> None:
    """The first create answers 503 *after* CVAT stored it? No: the double answers before storing;
    the point is that the retry path reads the job's annotations and then sends what is missing."""
    task_id, _, _ = two_job_task(cvat)
    cvat.fail_next("PATCH", r"/annotations", 503)
    code, summary, log = annotate(cvat, (model_root / "models" / "shapes").as_uri(), task_id)
    assert code == 0, log[-2000:]
    assert "checking what arrived" in log
    assert len(auto_shapes(cvat, task_id)) == 6 and summary["shapes"] == 6


# ---- pure helpers (no TensorFlow, no CVAT) -------------------------------------------------------


def test_plan_frames_rule() -> None:
    annotations = {
        "shapes": [
            {"frame": 1, "source": "manual"},
            {"frame": 2, "source": "auto", "id": 7},
            {"frame": 3, "source": "semi-auto"},
        ],
        "tags": [{"frame": 4, "source": "manual"}],
        "tracks": [{"frame": 5, "shapes": [{"frame": 5}, {"frame": 6}]}],
    }
    skip = pa.plan_frames(range(9), annotations, {8}, "skip")
    assert skip.frames == [0, 7] and skip.replace == {}
    assert (skip.skipped_annotated, skip.skipped_preannotated, skip.skipped_deleted) == (5, 1, 1)
    replace = pa.plan_frames(range(9), annotations, {8}, "replace")
    assert replace.frames == [0, 2, 7] and list(replace.replace) == [2]


def test_frame_shapes_threshold_mapping_and_types() -> None:
    outputs = {
        "detection_boxes": np.array([[[0.25, 0.25, 0.75, 0.75], [0.05, 0.1, 0.3, 0.4], [0, 0, 1, 1]]]),
        "detection_classes": np.array([[1, 2, 3]]),
        "detection_scores": np.array([[0.9, 0.6, 0.95]]),
        "num_detections": np.array([2]),  # the third is padding and must be ignored
    }
    classes = {1: "circle", 2: "square", 3: "triangle"}
    mapping = pa.map_labels(classes, [{"id": 11, "name": "circle", "type": "rectangle"}])
    assert mapping.missing == ["square", "triangle"]
    result = pa.frame_shapes(outputs, 0, 4, W, H, mapping, classes, 0.5)
    assert [(s["label_id"], s["points"], s["source"], s["frame"]) for s in result.shapes] == [
        (11, CIRCLE, "auto", 4)
    ]
    assert result.skipped_labels == {"square": 1}
    assert pa.frame_shapes(outputs, 0, 4, W, H, mapping, classes, 0.95).shapes == []

    polygon_only = pa.map_labels(classes, [{"id": 11, "name": "circle", "type": "polygon"}])
    assert pa.frame_shapes(outputs, 0, 4, W, H, polygon_only, classes, 0.5).incompatible == {"circle": 1}


def test_mask_rle_matches_cvat_sdk() -> None:
    from cvat_sdk.masks import decode_mask, encode_mask

    rng = np.random.default_rng(0)
    bitmap = rng.random((20, 30)) > 0.6
    bitmap[:, :3] = False
    full = np.zeros((50, 60), bool)
    full[10:30, 15:45] = bitmap
    ours = pa.mask_to_rle(bitmap, 15, 10)
    assert ours == [float(v) for v in encode_mask(full)]
    assert (decode_mask([int(v) for v in ours], image_width=60, image_height=50) == full).all()


def test_batches_keep_one_size_per_model_call() -> None:
    items = [(i, np.zeros((10 if i < 3 else 20, 10, 3), np.uint8)) for i in range(6)]
    assert [[i for i, _ in b] for b in pa.batches_by_size(items, 2)] == [[0, 1], [2], [3, 4], [5]]


# ---- the operator -------------------------------------------------------------------------------


def cvat_connection(monkeypatch, cvat, conn_id: str = "cvat_default") -> None:
    key, value = connection_env(conn_id, conn_type="cvat", host=cvat.url, password=cvat.DEFAULT_TOKEN)
    monkeypatch.setenv(key, value)


DAG = """
from airflow.sdk import DAG
from airflow_cvat.operators.preannotate import PreAnnotateOperator

with DAG("preannotate_dag", schedule=None, params={{"threshold": 0.5}}):
    PreAnnotateOperator(
        task_id="preannotate",
        task_ids=[{task_id}],
        root="{root}",
        model_name="shapes",
        threshold="{{{{ params.threshold }}}}",
        batch_size=2,
    )
"""


@pytest.mark.slow  # TensorFlow loads the SavedModel in a subprocess
def test_operator_in_a_dag_run_returns_the_summary(run_dag, cvat, model_root, monkeypatch, capfd) -> None:
    cvat_connection(monkeypatch, cvat)
    task_id, _, new = two_job_task(cvat)
    run = run_dag(DAG.format(task_id=task_id, root=model_root.as_uri()), "preannotate_dag")
    assert task_states(run) == {"preannotate": "success"}
    result = xcom(run, "preannotate")
    assert result["status"] == "ok"
    assert result["frames"] == 3 and result["shapes"] == 6
    assert result["per_label"] == {"circle": 3, "square": 3}
    [per_task] = result["tasks"]
    assert per_task["task_id"] == task_id and per_task["jobs"] == [new]
    assert len(auto_shapes(cvat, task_id)) == 6
    out = capfd.readouterr()
    assert cvat.DEFAULT_TOKEN not in out.out + out.err  # the token never reaches the log


def test_operator_bad_inputs_fail_before_any_process(monkeypatch, model_root, tmp_path) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_cvat.operators import preannotate as op_module
    from airflow_cvat.operators.preannotate import PreAnnotateOperator

    with pytest.raises(ValueError, match="model_uri, or root and model_name"):
        PreAnnotateOperator(task_id="p", task_ids=[1])
    with pytest.raises(ValueError, match="execution must be 'local' or 'kubernetes'"):
        op_module.preannotate_operator("docker", task_id="p", task_ids=[1], model_uri="file:///m")

    def forbidden(*args, **kwargs):
        raise AssertionError("no process may start on bad input")

    monkeypatch.setattr(subprocess, "Popen", forbidden)
    for kwargs, message in (
        ({"task_ids": []}, "task_ids"),
        ({"task_ids": ["x"]}, "task_ids"),
        ({"threshold": "2"}, "threshold"),
        ({"job_states": ["done"]}, "job_states"),
        ({"model_uri": (tmp_path / "nope").as_uri()}, "no published model"),
    ):
        operator = PreAnnotateOperator(
            task_id="p",
            **{"task_ids": [1], "model_uri": (model_root / "models" / "shapes").as_uri(), **kwargs},
        )
        with pytest.raises(AirflowFailException, match=message):
            operator.execute({"run_id": "r"})


def test_disabled_skips_and_the_publish_outcome_picks_the_model(monkeypatch, cvat, tmp_path) -> None:
    from airflow.sdk.exceptions import AirflowSkipException

    from airflow_cvat.operators import preannotate as op_module

    monkeypatch.setattr(subprocess, "Popen", None)  # no process may start
    operator = op_module.PreAnnotateOperator(
        task_id="p", task_ids=[1], model_uri="file:///m", enabled="False"
    )
    with pytest.raises(AirflowSkipException):
        operator.execute({"run_id": "r"})

    latest = {"moved": True, "uri": "s3://b/models/m/LATEST"}
    outcome = {"published": True, "uri": "s3://b/models/m/v2", "latest": latest}
    assert op_module.model_from_outcome(outcome) == "s3://b/models/m/v2"
    assert op_module.model_from_outcome({**outcome, "latest": {**latest, "moved": False}}) == latest["uri"]
    assert op_module.model_from_outcome({**outcome, "published": False}) == latest["uri"]

    # A project or job ids become task ids through the CVAT connection, before any process.
    cvat_connection(monkeypatch, cvat)
    project = cvat.add_project("p", ["circle"])
    first = cvat.add_task("a", frames=frames(2), project_id=project)
    second = cvat.add_task("b", frames=frames(2), project_id=project)
    from airflow_cvat.hooks.cvat import CVATHook

    hook = CVATHook("cvat_default")
    by_project = op_module.PreAnnotateOperator(task_id="p", project_id=project, model_uri="file:///m")
    assert sorted(by_project.resolve_task_ids(by_project.validated(), hook)) == [first, second]
    by_job = op_module.PreAnnotateOperator(
        task_id="p", job_ids=str(cvat.job_ids(second)[0]), model_uri="file:///m"
    )
    assert by_job.resolve_task_ids(by_job.validated(), hook) == (second,)


def test_kubernetes_pod_command_and_secret(kubernetes_conn, model_root) -> None:
    from airflow_cvat.operators import preannotate as op_module

    operator = op_module.preannotate_operator(
        "kubernetes",
        task_id="p",
        task_ids=[4, 5],
        root="s3://bucket/cvat",
        model_name="shapes",
        cvat_url="https://cvat.example.com",
        threshold=0.4,
        namespace="training",
    )
    from types import SimpleNamespace

    ti = SimpleNamespace(dag_id="d", task_id="p", map_index=-1, try_number=1)
    context = {"run_id": "r", "ti": ti, "dag": SimpleNamespace(dag_id="d")}
    pod = operator.build_pod_request_obj(context, dry_run=True)
    container = pod.spec.containers[0]
    assert container.command == ["python", "-m", "airflow_cvat.trainer.preannotate"]
    args = " ".join(container.args)
    assert "--model-uri s3://bucket/cvat/models/shapes " in args and "--threshold 0.4" in args
    assert "--task-id 4 --task-id 5" in args and "--cvat-url https://cvat.example.com" in args
    assert "--result-file /airflow/xcom/return.json" in args
    assert [e.secret_ref.name for e in container.env_from] == ["cvat-credentials", "cvat-training-storage"]
    assert not any("TOKEN" in str(e.value) or "PASSWORD" in e.name for e in container.env or [])
    assert pod.spec.node_selector == {"nvidia.com/gpu.present": "true"}  # smallest GPU type by default


def test_default_args_reach_the_kubernetes_operator(kubernetes_conn) -> None:
    from airflow.sdk import DAG

    from airflow_cvat.operators import preannotate as op_module

    defaults = {"model_uri": "file:///m", "task_ids": [3], "cvat_secret": "team-cvat", "retries": 2}
    with DAG("defaults", schedule=None, default_args=defaults):
        operator = op_module.preannotate_operator("kubernetes", task_id="p", namespace="ns")
    assert (operator.model_uri, operator.task_ids, operator.cvat_secret) == ("file:///m", [3], "team-cvat")
    assert operator.retries == 2 and operator.name == "cvat-preannotate" and operator.do_xcom_push is True


def test_operator_module_imports_neither_tensorflow_nor_kubernetes() -> None:
    code = (
        "import sys, time; t = time.perf_counter(); import airflow_cvat.operators.preannotate; "
        "print(round(time.perf_counter() - t, 3), 'tensorflow' in sys.modules, "
        "'airflow.providers.cncf.kubernetes.operators.pod' in sys.modules)"
    )
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.split()[1:] == ["False", "False"], (out.stdout, time.perf_counter() - started)


def test_operators_default_to_the_hooks_connection() -> None:
    """The operators name the CVAT connection without importing the hook (parse time)."""
    from airflow_cvat.hooks.cvat import CVATHook
    from airflow_cvat.operators import DEFAULT_CVAT_CONN_ID

    assert DEFAULT_CVAT_CONN_ID == CVATHook.default_conn_name


# ---- the optional DAG step ----------------------------------------------------------------------


def test_summary_reaches_the_success_email() -> None:
    from airflow_cvat.notifications.message import build_report

    outcome = {
        "model_name": "shapes",
        "version": "v1",
        "published": False,
        "uri": "file:///root/models/shapes/v1",
        "latest": {"reason": "test"},
        "metrics": {},
    }
    summary = {
        "status": "ok",
        "task_ids": [4],
        "frames": 3,
        "shapes": 6,
        "per_label": {"circle": 3, "square": 3},
        "skipped_labels": {"triangle": 1},
        "seconds_inference": 1.25,
        "seconds_upload": 0.5,
    }
    message = build_report(outcome, pre_annotation=summary)
    html = message.get_body(("html",)).get_content()
    text = message.get_body(("plain",)).get_content()
    assert "id='pre-annotation'" in html and "<td style='padding:2px 10px'>circle</td>" in html
    assert "3 frame(s), 6 shape(s) uploaded" in text and "triangle 1" in text
    assert "Pre-annotation" not in build_report(outcome).get_body(("plain",)).get_content()


def test_config_pre_annotates_the_runs_own_tasks_by_default() -> None:
    from airflow_cvat.retrain_config import ConfigError, resolve

    defaults = {"root": "file:///data/cvat", "model": "ssd-mobilenet-v2-coco", "execution": "local"}
    config = resolve({"task_ids": [3, 1], "pre_annotate": True}, defaults)
    assert config.pre_annotate and config.pre_annotate_task_ids == [3, 1]
    assert config.pre_annotate_threshold == 0.5 and config.to_dict()["pre_annotate_task_ids"] == [3, 1]
    config = resolve({"project_id": 4, "pre_annotate": "true", "pre_annotate_threshold": 0.3}, defaults)
    assert (config.pre_annotate_task_ids, config.pre_annotate_project_id) == ([], 4)
    assert config.pre_annotate_threshold == 0.3
    config = resolve({"task_ids": [1], "pre_annotate_task_ids": [7, 8], "pre_annotate": True}, defaults)
    assert config.pre_annotate_task_ids == [7, 8]
    assert not resolve({"task_ids": [1]}, defaults).pre_annotate
    for conf, message in (
        ({"source_uri": "s3://b/export.zip", "pre_annotate": True}, "give pre_annotate_task_ids"),
        ({"task_ids": [1], "pre_annotate": True, "pre_annotate_threshold": 1.5}, "within 0..1"),
        ({"task_ids": [1], "pre_annotate_task_ids": ["x"]}, "pre_annotate_task_ids must be"),
        ({"task_ids": [1], "pre_annotate": "maybe"}, "pre_annotate must be true or false"),
    ):
        with pytest.raises(ConfigError, match=None) as caught:
            resolve(conf, defaults)
        assert message in str(caught.value)


def test_retrain_dag_wires_pre_annotate_after_publish() -> None:
    """The real DAG file, parsed (not run: it trains): the step, its upstreams and trigger rules."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(str(REPO / "dags" / "cvat_retrain.py"))
    assert not bag.import_errors, bag.import_errors
    dag = bag.dags["cvat_retrain"]
    step = dag.get_task("pre_annotate")
    # The run's own backend, chosen when the task runs: a PreAnnotateOperator (local) or its pod.
    from airflow_cvat.operators.preannotate import preannotate_operator

    assert type(step).__name__ == "RunBackendOperator" and step.factory is preannotate_operator
    assert "execution" in str(step.execution)
    assert step.upstream_task_ids == {"publish"} and step.trigger_rule == "all_success"
    arguments = step.arguments
    assert "publish" in str(arguments["model_uri"]) and "pre_annotate" in str(arguments["enabled"])
    report = dag.get_task("email_report")
    assert report.upstream_task_ids == {"publish", "pre_annotate"}
    assert report.trigger_rule == "none_failed_min_one_success"
    assert "pre_annotate" in str(report.pre_annotation)
    assert "pre_annotate" not in dag.get_task("record_dataset").upstream_task_ids
    params = dag.params
    # No tasks by default: an empty, nullable ids field (the form types ids as text).
    assert params["pre_annotate"] is False and params["pre_annotate_task_ids"] is None
    assert params["pre_annotate_threshold"] == 0.5


SKIP_DAG = """
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG
from airflow_cvat.operators.preannotate import PreAnnotateOperator

with DAG("preannotate_off", schedule=None, params={"pre_annotate": False}):
    publish = EmptyOperator(task_id="publish")
    step = PreAnnotateOperator(
        task_id="pre_annotate", task_ids=[1], model_uri="file:///nowhere",
        enabled="{{ params.pre_annotate }}",
    )
    report = EmptyOperator(task_id="email_report", trigger_rule="none_failed_min_one_success")
    record = EmptyOperator(task_id="record_dataset")
    publish >> [step, record]
    [publish, step] >> report
"""


def test_switched_off_step_skips_and_the_report_still_runs(run_dag) -> None:
    run = run_dag(SKIP_DAG, "preannotate_off")
    assert task_states(run) == {
        "publish": "success",
        "pre_annotate": "skipped",
        "email_report": "success",
        "record_dataset": "success",
    }
