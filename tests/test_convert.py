"""ConvertModelOperator: the published layout, the quality gate, broken models, file:// and s3://,
and the deployables (nuclio handler, cvat-sdk function) really running on the published model."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from airflow_cvat.operators.convert import (
    LATEST,
    MARKER,
    ConvertModelOperator,
    decide,
    published_versions,
    storage_path,
)
from tests.fixtures.publish import LABELS, make_run

pytestmark = pytest.mark.usefixtures("convert_once")  # one TensorFlow conversion per distinct model

# ---- the gate as a pure rule -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("new", "latest", "moved", "words"),
    [
        (0.5, None, True, "first published"),
        (0.71, {"version": "a", "AP50": 0.70}, True, "not worse"),
        (0.69, {"version": "a", "AP50": 0.70}, True, "within the margin"),
        (0.68, {"version": "a", "AP50": 0.70}, True, "within the margin"),  # exactly at the margin
        (0.60, {"version": "a", "AP50": 0.70}, False, "worse than LATEST's 0.7000"),
        (None, {"version": "a", "AP50": 0.70}, False, "no AP50"),
    ],
)
def test_gate_rule(new, latest, moved, words):
    decision = decide(new, latest, 0.02)
    assert decision.moved is moved
    assert words in decision.reason


def test_gate_refuses_a_broken_model_even_when_better():
    decision = decide(0.99, {"version": "a", "AP50": 0.1}, 0.02, broken="OSError: cannot parse")
    assert not decision.moved and "broken" in decision.reason and "cannot parse" in decision.reason


# ---- publishing, file:// ------------------------------------------------------------------------


def publish(run: Path | str, root: str, **kwargs) -> dict:
    kwargs.setdefault("tflite", False)
    kwargs.setdefault("preview_images", 2)
    operator = ConvertModelOperator(
        task_id="publish", run_uri=str(run), root=root, model_name="shapes", **kwargs
    )
    return operator.execute({})


def read_latest(root: Path) -> dict:
    return json.loads((root / "models" / "shapes" / LATEST).read_text())


def test_first_publish_writes_everything_and_moves_latest(fake_runs, tmp_path):
    run = make_run(fake_runs, tmp_path / "root" / "runs" / "r1", ap50=0.7)
    manifest = tmp_path / "dataset" / "manifest.json"
    manifest.parent.mkdir()
    manifest.write_text(
        json.dumps(
            {
                "source": {"task_ids": [1]},
                "format": "COCO 1.0",
                "images": 30,
                "labels": [],
                "label_counts": {"circle": 20},
                "fingerprint": "sha256:ab",
                "archives": [{}],
                "created": "2026-01-01",
            }
        )
    )
    outcome = publish(run.as_uri(), (tmp_path / "root").as_uri(), tflite=True, dataset_manifest=str(manifest))

    assert outcome["published"] and outcome["latest"]["moved"]
    assert outcome["latest"]["new_ap50"] == 0.7 and outcome["latest"]["old_ap50"] is None
    version = Path(outcome["uri"].removeprefix("file://"))
    assert version.parent == tmp_path / "root" / "models" / "shapes"
    for name in (
        "saved_model/saved_model.pb",
        "label_map.json",
        "classes.csv",
        "metrics.json",
        "run.json",
        "nuclio/function.yaml",
        "nuclio/function-gpu.yaml",
        "nuclio/main.py",
        "nuclio/labels.json",
        "nuclio/saved_model/saved_model.pb",
        "cvat_function.py",
        "model_card.md",
        "model_card.json",
        "report/training.png",
        "report/preview-0.png",
        "model.tflite",
        MARKER,
    ):
        assert (version / name).is_file(), name
    latest = read_latest(tmp_path / "root")
    assert latest["version"] == version.name and latest["AP50"] == 0.7

    function = yaml.safe_load((version / "nuclio" / "function.yaml").read_text())
    assert function["metadata"]["annotations"]["type"] == "detector"
    spec = json.loads(function["metadata"]["annotations"]["spec"])
    assert spec == [{"id": e["id"], "name": e["name"], "type": "rectangle"} for e in LABELS]
    assert function["spec"]["handler"] == "main:handler"
    gpu = yaml.safe_load((version / "nuclio" / "function-gpu.yaml").read_text())
    assert gpu["spec"]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["spec"]["build"]["baseImage"].endswith("-gpu")
    assert gpu["metadata"]["name"] != function["metadata"]["name"]

    card = json.loads((version / "model_card.json").read_text())
    assert (
        card["base_model"]["name"] == "ssd-mobilenet-v2-coco" and card["base_model"]["family"] == "retinanet"
    )
    assert card["data"]["images"] == 30 and card["data"]["fingerprint"] == "sha256:ab"
    assert card["metrics"]["AP50"] == 0.7 and card["labels"] == LABELS
    assert card["tflite"]["status"] == "converted"
    markdown = (version / "model_card.md").read_text()
    assert "| circle | 0.500 | 0.700 | 0.400 |" in markdown and "| triangle | n/a | n/a | n/a |" in markdown


def test_gate_sequence_worse_stays_within_margin_moves(fake_runs, tmp_path):
    root = tmp_path / "root"
    first = publish(make_run(fake_runs, root / "runs" / "a", ap50=0.70), root.as_uri(), version="v1")
    worse = publish(make_run(fake_runs, root / "runs" / "b", ap50=0.60), root.as_uri(), version="v2")
    assert first["latest"]["moved"]
    assert worse["published"] and not worse["latest"]["moved"]
    assert worse["latest"]["old_ap50"] == 0.70 and worse["latest"]["new_ap50"] == 0.60
    assert "worse than LATEST" in worse["latest"]["reason"]
    assert read_latest(root)["version"] == "v1"

    close = publish(make_run(fake_runs, root / "runs" / "c", ap50=0.69), root.as_uri(), version="v3")
    assert close["latest"]["moved"] and "within the margin" in close["latest"]["reason"]
    latest = read_latest(root)
    assert latest["version"] == "v3" and latest["previous"] == {"version": "v1", "AP50": 0.70}
    assert published_versions(root.as_uri(), "shapes") == ["v1", "v2", "v3"]


@pytest.mark.parametrize("kind", ["bad-classes", "corrupt"])
def test_broken_model_is_refused(fake_runs, tmp_path, kind):
    root = tmp_path / "root"
    publish(make_run(fake_runs, root / "runs" / "good", ap50=0.5), root.as_uri(), version="v1")
    outcome = publish(
        make_run(fake_runs, root / "runs" / "bad", ap50=0.99, kind=kind), root.as_uri(), version="v2"
    )
    assert not outcome["published"] and not outcome["latest"]["moved"]
    assert "broken" in outcome["latest"]["reason"] and outcome["error"]
    assert read_latest(root)["version"] == "v1"
    assert not (root / "models" / "shapes" / "v2").exists()


def test_half_written_version_is_not_a_version_and_retry_reuses(fake_runs, tmp_path):
    root = tmp_path / "root"
    half = root / "models" / "shapes" / "20990101T000000Z"
    (half / "saved_model").mkdir(parents=True)
    assert published_versions(root.as_uri(), "shapes") == []

    run = make_run(fake_runs, root / "runs" / "a", ap50=0.7)
    first = publish(run, root.as_uri(), version="v1")
    # The LATEST write was lost (say the worker died right after the marker): a retry finishes it.
    (root / "models" / "shapes" / LATEST).unlink()
    again = publish(run, root.as_uri())
    assert again["version"] == first["version"] == "v1"
    assert again["latest"]["moved"] and read_latest(root)["version"] == "v1"
    assert published_versions(root.as_uri(), "shapes") == ["v1"]
    # A second try with LATEST in place reports it, and still makes no copy.
    third = publish(run, root.as_uri())
    assert third["version"] == "v1" and "already LATEST" in third["latest"]["reason"]


def test_a_complete_version_is_never_overwritten(fake_runs, tmp_path):
    root = tmp_path / "root"
    publish(make_run(fake_runs, root / "runs" / "a", ap50=0.7), root.as_uri(), version="v1")
    second = publish(make_run(fake_runs, root / "runs" / "b", ap50=0.7), root.as_uri(), version="v1")
    assert second["version"] == "v1-2"


def test_unfinished_run_fails_with_the_reason(tmp_path):
    (tmp_path / "runs" / "r").mkdir(parents=True)
    with pytest.raises(RuntimeError, match="no result.json"):
        publish(tmp_path / "runs" / "r", tmp_path.as_uri())


# ---- publishing, s3:// (moto) --------------------------------------------------------------------


def test_publish_to_s3(fake_runs, tmp_path, s3_bucket):
    local = make_run(fake_runs, tmp_path / "run", ap50=0.7)
    run = storage_path(f"s3://{s3_bucket}/cvat/runs/r1", "aws_default")
    for path in local.rglob("*"):
        if path.is_file():
            run.fs.put_file(str(path), f"{run.path}/{path.relative_to(local).as_posix()}")
    root = f"s3://{s3_bucket}/cvat"
    outcome = publish(f"s3://{s3_bucket}/cvat/runs/r1", root, storage_conn_id="aws_default", version="v1")
    assert outcome["published"] and outcome["latest"]["moved"]
    assert outcome["uri"] == f"s3://{s3_bucket}/cvat/models/shapes/v1"
    models = storage_path(f"{root}/models/shapes", "aws_default")
    assert json.loads((models / LATEST).read_text())["version"] == "v1"
    assert (models / "v1" / MARKER).exists() and (models / "v1" / "nuclio" / "main.py").exists()
    assert (models / "v1" / "saved_model" / "saved_model.pb").exists()
    marker = json.loads((models / "v1" / MARKER).read_text())
    assert "saved_model/saved_model.pb" in marker["files"] and MARKER not in marker["files"]

    worse = make_run(fake_runs, tmp_path / "run2", ap50=0.5)
    for path in worse.rglob("*"):
        if path.is_file():
            run.fs.put_file(str(path), f"{s3_bucket}/cvat/runs/r2/{path.relative_to(worse).as_posix()}")
    refused = publish(f"s3://{s3_bucket}/cvat/runs/r2", root, storage_conn_id="aws_default", version="v2")
    assert refused["published"] and not refused["latest"]["moved"]
    assert json.loads((models / LATEST).read_text())["version"] == "v1"
    assert published_versions(root, "shapes", "aws_default") == ["v1", "v2"]


# ---- the deployables run ----------------------------------------------------------------------------

_RUN_DEPLOYABLES = textwrap.dedent(
    """
    import base64, importlib.util, io, json, sys, types
    from pathlib import Path
    from PIL import Image, ImageDraw

    version, thresholds = Path(sys.argv[1]), [float(t) for t in sys.argv[2:]]
    image = Image.new("RGB", (200, 100), (40, 60, 90))
    ImageDraw.Draw(image).ellipse([50, 25, 150, 75], fill=(220, 40, 40))
    buffer = io.BytesIO(); image.save(buffer, format="JPEG")

    def load(path, name):
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
        return module

    # nuclio: the way CVAT calls it (JSON body with a base64 image), with nuclio's context shape.
    main = load(version / "nuclio" / "main.py", "main")
    class Response:
        def __init__(self, **kw): self.__dict__.update(kw)
    log = types.SimpleNamespace(info=lambda *a, **k: None)
    context = types.SimpleNamespace(logger=log, user_data=types.SimpleNamespace(), Response=Response)
    main.init_context(context)
    # cvat-sdk auto-annotation function, as cvat-cli --function-file loads it.
    function = load(version / "cvat_function.py", "cvat_function")
    # What the SavedModel itself says, for comparison.
    import numpy as np, tensorflow as tf
    serve = tf.saved_model.load(str(version / "saved_model")).signatures["serving_default"]
    array = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))[None]
    out = {k: v.numpy()[0] for k, v in serve(images=tf.constant(array)).items()}
    n = int(out["num_detections"])

    answers = []
    for threshold in thresholds:
        event = types.SimpleNamespace(body={"image": base64.b64encode(buffer.getvalue()).decode(),
                                            "threshold": threshold})
        response = main.handler(context, event)
        nuclio = {"status": response.status_code, "content_type": response.content_type,
                  "body": json.loads(response.body)}
        ctx = types.SimpleNamespace(frame_name="f.jpg", conf_threshold=threshold, conv_mask_to_poly=False)
        shapes = function.detect(ctx, Image.open(io.BytesIO(buffer.getvalue())))
        pairs = zip(out["detection_classes"][:n], out["detection_scores"][:n])
        answers.append({
            "direct": [int(c) for c, sc in pairs if sc >= threshold],
            "nuclio": nuclio,
            "spec": [{"id": l.id, "name": l.name, "type": l.type} for l in function.spec.labels],
            "shapes": [{"type": s.type.value, "label_id": s.label_id, "points": s.points,
                        "cls": type(s).__name__} for s in shapes],
        })
    print(json.dumps(answers))
    """
)


def run_deployables(version: Path, *thresholds: float) -> list[dict]:
    """One answer per threshold, from one process (TensorFlow starts once)."""
    completed = subprocess.run(
        [sys.executable, "-c", _RUN_DEPLOYABLES, str(version), *map(str, thresholds)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_nuclio_handler_and_cvat_function_serve_the_published_model(fake_runs, tmp_path):
    root = tmp_path / "root"
    outcome = publish(make_run(fake_runs, root / "runs" / "a", ap50=0.7), root.as_uri(), version="v1")
    answer, high = run_deployables(Path(outcome["uri"].removeprefix("file://")), 0.5, 0.8)

    nuclio = answer["nuclio"]
    assert nuclio["status"] == 200 and nuclio["content_type"] == "application/json"
    # The fake model: circle at the centre (0.9), square top-left (0.6), on a 200x100 image.
    assert [(s["label"], s["type"]) for s in nuclio["body"]] == [
        ("circle", "rectangle"),
        ("square", "rectangle"),
    ]
    assert nuclio["body"][0]["points"] == pytest.approx([50, 25, 150, 75])
    assert float(nuclio["body"][0]["confidence"]) == pytest.approx(0.9)
    assert nuclio["body"][1]["points"] == pytest.approx([20, 5, 80, 30])

    assert answer["spec"] == [{"id": e["id"], "name": e["name"], "type": "rectangle"} for e in LABELS]
    assert [(s["type"], s["label_id"], s["cls"]) for s in answer["shapes"]] == [
        ("rectangle", 1, "LabeledShapeRequest"),
        ("rectangle", 2, "LabeledShapeRequest"),
    ]
    assert answer["shapes"][0]["points"] == pytest.approx([50, 25, 150, 75])
    # The caller's threshold is honoured.
    assert [s["label"] for s in high["nuclio"]["body"]] == ["circle"] and len(high["shapes"]) == 1


def test_mask_model_serves_cvat_masks(fake_runs, tmp_path):
    root = tmp_path / "root"
    outcome = publish(
        make_run(fake_runs, root / "runs" / "m", ap50=0.7, kind="mask"), root.as_uri(), version="m1"
    )
    version = Path(outcome["uri"].removeprefix("file://"))
    function = yaml.safe_load((version / "nuclio" / "function.yaml").read_text())
    assert {e["type"] for e in json.loads(function["metadata"]["annotations"]["spec"])} == {"mask"}
    [answer] = run_deployables(version, 0.5)
    circle = answer["nuclio"]["body"][0]
    assert circle["type"] == "mask" and circle["label"] == "circle"
    # CVAT's mask points: run lengths over the box (inclusive, row-major, starting with zeros),
    # then the box itself.
    runs, box = circle["points"][:-4], circle["points"][-4:]
    assert box == [50, 25, 150, 75]
    assert sum(runs) == (150 - 50 + 1) * (75 - 25 + 1)
    ones = sum(runs[1::2])
    assert 0.2 < ones / sum(runs) < 0.3  # the middle half in each direction: a quarter of the box


def test_real_trained_run_publishes_and_serves(trained_run, tmp_path):
    """The trainer's real SavedModel (RetinaNet, MobileNetV2) through the whole publish step."""
    outcome = publish(trained_run.as_uri(), (tmp_path / "root").as_uri(), version="real", preview_images=2)
    assert outcome["published"] and outcome["latest"]["moved"], outcome
    version = Path(outcome["uri"].removeprefix("file://"))
    assert (version / "report" / "training.png").is_file() and (
        version / "report" / "preview-1.png"
    ).is_file()
    [answer] = run_deployables(version, 0.0)
    # A 60-step model often detects nothing (the Model Garden drops scores under 0.05 before NMS),
    # so the check is agreement with the SavedModel itself, shape by shape, not a count.
    names = {e["name"] for e in LABELS}
    by_id = {e["id"]: e["name"] for e in LABELS}
    assert [s["label"] for s in answer["nuclio"]["body"]] == [by_id[c] for c in answer["direct"]]
    assert [s["label_id"] for s in answer["shapes"]] == answer["direct"]
    for shape in answer["nuclio"]["body"]:
        assert shape["label"] in names and shape["type"] == "rectangle" and len(shape["points"]) == 4
        xtl, ytl, xbr, ybr = shape["points"]
        assert 0 <= xtl <= xbr <= 200 and 0 <= ytl <= ybr <= 100
    assert all(s["label_id"] in {1, 2, 3} for s in answer["shapes"])


FAKE_CONVERT = """
import os, sys, time
from airflow_cvat.envelope import EXIT_FAILED, EXIT_OK, emit, failure

result_file = sys.argv[sys.argv.index("--result-file") + 1]
mode = os.environ["FAKE_CONVERT"]
print("log", flush=True)
if mode == "secrets":
    sys.exit(emit({"status": "ok", "conn": os.environ.get("AIRFLOW_CONN_AWS_DEFAULT")}, EXIT_OK, result_file))
if mode == "error":
    sys.exit(emit(failure("the run cannot be staged"), EXIT_FAILED, result_file))
if mode == "hang":
    time.sleep(30)
print("nothing")
"""


def test_subprocess_result_timeout_and_secrets(monkeypatch, tmp_path, capsys):
    """The local TensorFlow half: its envelope read by the one reader, no connection secrets in
    its environment, a command without a result or past its time limit fails the task."""
    import re

    from airflow.sdk.exceptions import AirflowException

    from airflow_cvat.operators import convert
    from airflow_cvat.operators.convert import PublishError

    monkeypatch.undo()  # the real run_convert, not convert_once's cache (nothing here is TensorFlow)
    (tmp_path / "fake_convert.py").write_text(FAKE_CONVERT)
    monkeypatch.setattr(convert, "CONVERT_MODULE", "fake_convert")
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{Path(__file__).resolve().parents[1]}")
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", '{"password": "hunter2"}')

    def run(mode: str, timeout: float = 60) -> dict:
        monkeypatch.setenv("FAKE_CONVERT", mode)
        operator = ConvertModelOperator(
            task_id="publish",
            run_uri="file:///r",
            root="file:///root",
            model_name="m",
            convert_timeout=timeout,
        )
        return operator.run_convert(tmp_path / "staged", tmp_path / "out")

    assert run("secrets") == {"status": "ok", "conn": None}  # no connection secrets in the child
    assert re.search(r"\] log +\[", capsys.readouterr().out)  # its output streams into the task log
    with pytest.raises(AirflowException, match="model conversion failed: the run cannot be staged"):
        run("error")
    with pytest.raises(AirflowException, match="no JSON result"):
        run("silent")
    with pytest.raises(PublishError, match="ran longer than"):
        run("hang", timeout=0.5)
