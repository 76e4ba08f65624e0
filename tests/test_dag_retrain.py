"""The ready DAG, end to end, run by Airflow (dag.test) against the CVAT double, moto S3 and aiosmtpd.

Training is real (local CPU, a short schedule on generated shapes); these are the slowest tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.airflow import connection_env, task_states, xcom

DAG_FILE = Path(__file__).resolve().parents[1] / "dags" / "cvat_retrain.py"
MODEL = "ssd-mobilenet-v2-coco"
ARGUMENTS = "epochs=40;batch_size=2;input_size=128"


pytestmark = pytest.mark.slow  # trains for real: after the light tests


@pytest.fixture(scope="module")
def base_weights(tmp_path_factory) -> Path:
    """An offline base checkpoint (random init), as the README's demo makes one."""
    weights = tmp_path_factory.mktemp("weights") / MODEL
    subprocess.run(
        [sys.executable, "-m", "airflow_cvat.trainer", "init-base", "--model", MODEL,
         "--output", f"file://{weights}"],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    return weights


@pytest.fixture
def pipeline(cvat_double, s3_bucket, smtp_server, base_weights, tmp_path, monkeypatch, run_dag):
    """A CVAT task with finished work, an S3 artifact root, and a runner for the real DAG file."""
    task_id = cvat_double.add_task("shapes", frames=24, segment_size=12, seed=3)
    for job_id in cvat_double.job_ids(task_id):
        cvat_double.set_job(job_id, state="completed", stage="acceptance")
    monkeypatch.setenv(
        *connection_env(
            "cvat_default", conn_type="cvat", host=cvat_double.url, password=cvat_double.DEFAULT_TOKEN
        )
    )
    catalog = tmp_path / "catalog.json"
    entry = {
        "name": MODEL,
        "family": "retinanet",
        "backbone": "mobilenet_v2",
        "checkpoint": f"file://{base_weights}/",
    }
    catalog.write_text(json.dumps({"models": [entry]}))
    root = f"s3://{s3_bucket}/cvat"
    monkeypatch.setenv("AIRFLOW_VAR_CVAT_RETRAIN", json.dumps({"root": root, "catalog_file": str(catalog)}))
    monkeypatch.setenv("CVAT_STORAGE_CONN_ID", "aws_default")
    monkeypatch.setenv("CVAT_RETRAIN_SCHEDULE", "none")
    # 40 steps from random weights learn too little for the default floor (AP50 0.3); the floor's
    # own test below raises it again.
    monkeypatch.setenv("CVAT_QUALITY_FLOOR", "0")

    def run(**conf):
        # Ids as the trigger form sends them (text); REST and the webhook send lists (test_dag_form).
        conf = {"task_ids": f"{task_id}", "arguments": ARGUMENTS, "emails": ["team@example.com"]} | conf
        return run_dag(DAG_FILE.read_text(), "cvat_retrain", conf)

    return {"run": run, "task_id": task_id, "bucket": s3_bucket, "mail": smtp_server, "cvat": cvat_double}


def s3_keys(bucket: str, prefix: str = "") -> list[str]:
    import boto3

    listing = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix)
    return [item["Key"] for item in listing.get("Contents", [])]


def s3_json(bucket: str, key: str):
    import boto3

    return json.loads(boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())


def test_retrains_publishes_pre_annotates_emails_then_skips_unchanged_data(pipeline, tmp_path):
    bucket, mail, cvat = pipeline["bucket"], pipeline["mail"], pipeline["cvat"]
    # A second task nobody has started: the new model pre-annotates it (the optional step).
    unstarted = cvat.add_task("shapes-todo", frames=4, segment_size=4, seed=5, annotated=False)
    started = time.perf_counter()
    first = pipeline["run"](
        pre_annotate=True, pre_annotate_task_ids=f"{unstarted}\n", pre_annotate_threshold=0.05
    )
    print(f"first run: {time.perf_counter() - started:.1f} s")

    assert task_states(first) == {
        **dict.fromkeys(["config", "export", "pull_base_model", "train_local", "publish"], "success"),
        **dict.fromkeys(["pre_annotate", "email_report", "record_dataset"], "success"),
    }
    summary = xcom(first, "pre_annotate")
    auto = [shape for shape in cvat.annotations(unstarted) if shape["source"] == "auto"]
    assert summary["task_id"] == unstarted and summary["frames"] == 4 and summary["shapes"] == len(auto)
    assert not [shape for shape in cvat.annotations(pipeline["task_id"]) if shape["source"] == "auto"]
    latest = s3_json(bucket, f"cvat/models/{MODEL}/LATEST")
    version_prefix = f"cvat/models/{MODEL}/{latest['version']}/"
    keys = s3_keys(bucket, version_prefix)
    for name in ("saved_model/saved_model.pb", "nuclio/function.yaml", "nuclio/main.py", "cvat_function.py",
                 "model_card.md", "label_map.json", "PUBLISHED.json"):  # fmt: skip
        assert version_prefix + name in keys
    manifest_keys = [k for k in s3_keys(bucket, "cvat/datasets/") if k.endswith("manifest.json")]
    manifest = s3_json(bucket, manifest_keys[0])
    assert manifest["images"] == 24 and manifest["source"]["task_ids"] == [pipeline["task_id"]]

    # The published SavedModel loads and predicts on a generated frame.
    local = tmp_path / "published"
    _download(bucket, version_prefix + "saved_model/", local / "saved_model")
    predicted = subprocess.run([sys.executable, "-c", PREDICT, str(local / "saved_model")],
                               check=True, capture_output=True, text=True, timeout=300).stdout  # fmt: skip
    outputs = json.loads(predicted.strip().splitlines()[-1])
    assert outputs["boxes_shape"][0] == 1 and outputs["boxes_shape"][2] == 4

    # The email: link, metrics, whether LATEST moved, inline images.
    message = mail.wait(1)[-1]
    assert "team@example.com" in message["To"]
    html = message.get_body(("html",)).get_content()
    assert "AP50" in html and latest["version"] in html and "circle" in html
    assert "id='pre-annotation'" in html and f"task(s) {unstarted}" in html
    images = [part for part in message.walk() if part.get_content_maintype() == "image"]
    assert len(images) >= 2 and all(part["Content-ID"] for part in images)

    # Unchanged annotations: the nightly-style rerun skips at the export, before any training.
    mail.clear()
    second = pipeline["run"]()
    states = task_states(second)
    assert (
        states["export"] == "skipped"
        and states["train_local"] == "skipped"
        and states["publish"] == "skipped"
        and states["pre_annotate"] == "skipped"
    )
    assert s3_json(bucket, f"cvat/models/{MODEL}/LATEST")["version"] == latest["version"]
    assert not mail.raw


def test_a_model_below_the_quality_floor_is_published_but_never_latest_and_never_pre_annotates(
    pipeline, monkeypatch
):
    bucket, mail, cvat = pipeline["bucket"], pipeline["mail"], pipeline["cvat"]
    monkeypatch.setenv("CVAT_QUALITY_FLOOR", "0.99")  # no 5-step model reaches it
    unstarted = cvat.add_task("shapes-todo", frames=4, segment_size=4, seed=5, annotated=False)
    run = pipeline["run"](arguments="epochs=5;batch_size=2;input_size=128", pre_annotate=True,
                          pre_annotate_task_ids=[unstarted])  # fmt: skip

    states = task_states(run)
    assert states["publish"] == "success" and states["email_report"] == "success"
    assert states["pre_annotate"] == "skipped"
    assert not cvat.annotations(unstarted)
    outcome = xcom(run, "publish")
    gate = outcome["latest"]
    assert outcome["published"] and not gate["moved"] and gate["below_floor"] and gate["current"] is None
    assert f"cvat/models/{MODEL}/{outcome['version']}/PUBLISHED.json" in s3_keys(bucket, "cvat/models/")
    assert f"cvat/models/{MODEL}/LATEST" not in s3_keys(bucket, "cvat/models/")
    html = mail.wait(1)[-1].get_body(("html",)).get_content()
    assert "below the quality floor 0.99" in html and "does not become LATEST" in html


def test_bad_arguments_fail_before_export_and_send_the_failure_email(pipeline):
    run = pipeline["run"](arguments="epochs=40;batch_sise=2")
    states = task_states(run)
    assert states["config"] == "failed"
    assert all(states[t] in ("upstream_failed", "None") for t in ("export", "pull_base_model", "train_local"))
    assert not pipeline["cvat"].requests_to("POST", r"/dataset/export")
    message = pipeline["mail"].wait(1)[-1]
    body = message.get_body(("plain", "html")).get_content()
    assert "config" in message["Subject"] + body and "batch_sise" in body


PREDICT = """
import json, sys
import numpy as np, tensorflow as tf
from demo_data.synthetic import generate_frame
from PIL import Image
import io
frame = generate_frame(0, width=160, height=120, seed=11)
image = np.array(Image.open(io.BytesIO(frame.jpeg)).convert("RGB"))[None]
out = tf.saved_model.load(sys.argv[1]).signatures["serving_default"](images=tf.constant(image))
print(json.dumps({"boxes_shape": out["detection_boxes"].shape.as_list()}))
"""


def _download(bucket: str, prefix: str, target: Path) -> None:
    import boto3

    s3 = boto3.client("s3")
    for key in s3_keys(bucket, prefix):
        path = target / key[len(prefix) :]
        path.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, key, str(path))
