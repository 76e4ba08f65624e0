"""Emails through a real SMTP server (aiosmtpd on 127.0.0.1): the success report (links to the
model, the Airflow run and the CVAT tasks, the comparison with LATEST in plain words, the AP
history, the metrics table, inline images under a legend), and the failure email from a DAG
run whose task raises."""

from __future__ import annotations

import io
import json
import re
import urllib.request
from dataclasses import asdict
from pathlib import Path

import pytest
from PIL import Image

from airflow_cvat.notifications.email import recipients, send_model_report
from airflow_cvat.notifications.message import build_report, scrub
from airflow_cvat.operators.convert import ConvertModelOperator, decide, storage_path
from tests.fixtures.airflow import task_states
from tests.fixtures.publish import make_run

CVAT_SERVER = "http://cvat.example:8080"
AIRFLOW_URL = "https://airflow.example.org/base"
HISTORY = [
    {"step": 20, "AP": 0.1, "AP50": 0.25, "AP75": 0.05, "seconds": 9.0},
    {"step": 60, "AP": 0.3, "AP50": 0.55, "AP75": 0.2, "seconds": 1.5},
    {"step": 100, "AP": 0.42, "AP50": 0.7, "AP75": 0.35, "seconds": 1.7},
]


PREPARED = {  # what prepare reports (trainer/prepare.py): the split and every drop by reason
    "split": {"mode": "subsets", "description": "subsets: Train 12 / Validation 4 / Test 2"},
    "images": {"selected": 24, "train": 12, "validation": 4, "test": 2},
    "dropped_images": {"image_not_in_zip": 6},
    "dropped_shapes": {"degenerate_box": 1, "unsupported_tag": 2},
    "clipped_shapes": 1,
    "labels_left_out": [{"name": "weather", "reason": "tag label"}],
}


def with_history_and_source(run: Path, tmp: Path) -> Path:
    """Give a fake run the trainer's AP history and prepare's report; return a dataset manifest
    naming CVAT tasks."""
    metrics = json.loads((run / "metrics.json").read_text())
    test = {"images": 2, "step": 100, "AP": 0.35, "AP50": 0.6, "AP75": 0.3, "per_class": {}}
    (run / "metrics.json").write_text(json.dumps({**metrics, "history": HISTORY, "test": test}))
    result = json.loads((run / "result.json").read_text())
    (run / "result.json").write_text(json.dumps({**result, "prepared": PREPARED}))
    manifest = tmp / "manifest.json"
    source = {"kind": "cvat", "server": CVAT_SERVER, "project_id": None, "task_ids": [12, 13]}
    manifest.write_text(json.dumps({"source": source, "images": 24, "labels": []}))
    return manifest


@pytest.fixture(scope="module")
def published(fake_runs, tmp_path_factory) -> dict:
    """One file:// publish (LATEST moved) shared by the report tests."""
    root = tmp_path_factory.mktemp("email-root")
    run = make_run(fake_runs, root / "runs" / "r1", ap50=0.7)
    manifest = with_history_and_source(run, root)
    operator = ConvertModelOperator(
        task_id="publish",
        run_uri=run.as_uri(),
        root=root.as_uri(),
        model_name="shapes",
        version="v1",
        tflite=False,
        preview_images=3,
        dataset_manifest=manifest.as_uri(),
    )
    return operator.execute({})


@pytest.fixture
def airflow_base_url(monkeypatch) -> str:
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", AIRFLOW_URL)
    return AIRFLOW_URL


def hrefs(body: str) -> dict[str, str]:
    """Link text -> href of every link in the HTML."""
    return {
        text: href.replace("&amp;", "&") for href, text in re.findall(r"<a href='([^']*)'>([^<]*)</a>", body)
    }


def inline_images(message) -> dict[str, Image.Image]:
    found = {}
    for part in message.walk():
        if part.get_content_maintype() == "image":
            image = Image.open(io.BytesIO(part.get_payload(decode=True)))
            image.load()
            found[part["Content-ID"].strip("<>")] = image
    return found


def html_of(message) -> str:
    return message.get_body(preferencelist=("html",)).get_content()


def test_success_report_file(published, smtp_server, airflow_base_url):
    run_id = "manual__2026-12-04T10:00:00+00:00"
    send_model_report(published, "ml@example.com, lead@example.com", dag_id="cvat_retrain", run_id=run_id)
    [message] = smtp_server.wait(1)
    assert smtp_server.envelopes[0][1] == ["ml@example.com", "lead@example.com"]
    assert message["Subject"] == "[CVAT model] shapes v1: LATEST moved (AP50 0.700)"
    assert message["From"] == "airflow@example.com"
    body = html_of(message)
    assert published["uri"] in body and published["uri"].removeprefix("file://") in body
    assert "AP50 0.700. The first published version of shapes: it becomes LATEST." in body
    assert "first published model" in body  # the gate's own reason, under the sentence
    links = hrefs(body)
    # Airflow 3's run page, under [api] base_url, the run id escaped for a URL path.
    assert links[f"cvat_retrain / {run_id}"] == (
        f"{AIRFLOW_URL}/dags/cvat_retrain/runs/manual__2026-12-04T10%3A00%3A00%2B00%3A00"
    )
    assert links["task 12"] == f"{CVAT_SERVER}/tasks/12" and links["task 13"] == f"{CVAT_SERVER}/tasks/13"
    # The AP history: every evaluation of the run, in order, and what one evaluation cost.
    history = body.split('id="history">')[1].split("</p>")[0]
    assert "0.250 at step 20, 0.550 at step 60, 0.700 at step 100 (final)" in history
    assert "one evaluation took about 1.7 s" in history
    # The legend precedes the previews and names both kinds of box.
    legend = body.index("id='legend'")
    assert legend < body.index("cid:preview-0.png")
    assert "ground truth" in body[legend:] and "prediction" in body[legend:]
    assert "<td style='padding:2px 10px'>circle</td><td style='padding:2px 10px'>0.500</td>" in body
    assert "<td style='padding:2px 10px'>triangle</td><td style='padding:2px 10px'>n/a</td>" in body
    # Inline images: a multipart/related holding the HTML and PNGs it references by cid.
    related = [p for p in message.walk() if p.get_content_type() == "multipart/related"]
    assert related, "images must be inline (multipart/related)"
    images = inline_images(message)
    assert set(images) == {"training.png", "preview-0.png", "preview-1.png", "preview-2.png"}
    for name, image in images.items():
        assert f"cid:{name}" in body and image.format == "PNG" and image.width > 100
    text = message.get_body(preferencelist=("plain",)).get_content()
    assert "circle\t0.500\t0.700\t0.400" in text
    assert (
        f"CVAT: {CVAT_SERVER}/tasks/12" in text and f"Airflow run: {AIRFLOW_URL}/dags/cvat_retrain/" in text
    )


def gate(published: dict, new_ap50: float, latest: dict | None, **kwargs) -> dict:
    """The outcome as publish returns it, with the real gate's decision for these numbers."""
    decision = asdict(decide(new_ap50, latest, 0.02, floor=0.3, **kwargs))
    return dict(published, latest={**published["latest"], **decision})


@pytest.mark.parametrize(
    ("new", "latest", "words", "state"),
    [
        (0.81, 0.76, "AP50 0.810, up 0.050 from 0.760 of version v0, which it replaces as LATEST.", "moved"),
        (
            0.75,
            0.76,
            "AP50 0.750, down 0.010 from 0.760 of version v0 (within the margin 0.02), which it replaces",
            "moved",
        ),
        (
            0.70,
            0.90,
            "AP50 0.700, down 0.200 from 0.900 of version v0: more than the margin 0.02 below LATEST, "
            "so LATEST still points to v0.",
            "stays",
        ),
        (0.76, 0.76, "AP50 0.760, equal to 0.760 of version v0, which it replaces as LATEST.", "moved"),
        (0.20, 0.90, "AP50 0.200 is below the quality floor 0.3", "stays"),
    ],
)
def test_report_compares_with_latest_in_plain_words(published, new, latest, words, state):
    message = build_report(gate(published, new, {"version": "v0", "AP50": latest}))
    assert words in html_of(message) and words in message.get_body(preferencelist=("plain",)).get_content()
    assert f"LATEST {state}" in message["Subject"]


def test_report_when_the_model_is_refused(published):
    refused = dict(
        gate(published, 0.7, {"version": "v0", "AP50": 0.6}, broken="OSError"), published=False, files={}
    )
    message = build_report(refused)
    body = html_of(message)
    assert "refused" in message["Subject"]
    assert "The model is broken and was not published: OSError; LATEST still points to v0." in body
    assert not inline_images(message) and "id='legend'" not in body


def test_task_links_use_the_cvat_connection(published, smtp_server, monkeypatch):
    """With cvat_conn_id the links point at the connection's server (e.g. its public name)."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_CVAT_PUBLIC", json.dumps({"conn_type": "cvat", "host": "cvat.public.example"})
    )
    send_model_report(published, ["ml@example.com"], cvat_conn_id="cvat_public")
    [message] = smtp_server.wait(1)
    links = hrefs(html_of(message))
    assert links["task 12"] == "https://cvat.public.example/tasks/12"


def test_real_trained_run_reports_ap_at_several_steps(trained_run, tmp_path):
    """The trainer evaluates during training: the report of a real run shows more than one point."""
    metrics = json.loads((trained_run / "metrics.json").read_text())
    steps = [point["step"] for point in metrics["history"]]
    assert len(steps) > 1 and steps == sorted(steps) and steps[-1] == metrics["step"]
    assert all(point["seconds"] > 0 for point in metrics["history"])
    outcome = ConvertModelOperator(
        task_id="publish",
        run_uri=trained_run.as_uri(),
        root=(tmp_path / "root").as_uri(),
        model_name="real",
        version="v1",
        tflite=False,
        preview_images=1,
    ).execute({})
    history = html_of(build_report(outcome)).split('id="history">')[1].split("</p>")[0]
    assert history.count(" at step ") == len(steps)
    # The plot's AP curve has a point per evaluation (the TensorBoard eval events).
    report = Path(outcome["uri"].removeprefix("file://")) / "report" / "history.json"
    assert [s for s, _ in json.loads(report.read_text())["eval"]["coco/AP50"]] == steps


def test_success_report_s3_link_is_presigned_and_works(fake_runs, tmp_path, s3_bucket, smtp_server):
    local = make_run(fake_runs, tmp_path / "run", ap50=0.7)
    run = storage_path(f"s3://{s3_bucket}/cvat/runs/r1", "aws_default")
    for path in local.rglob("*"):
        if path.is_file():
            run.fs.put_file(str(path), f"{run.path}/{path.relative_to(local).as_posix()}")
    outcome = ConvertModelOperator(
        task_id="publish",
        run_uri=f"s3://{s3_bucket}/cvat/runs/r1",
        root=f"s3://{s3_bucket}/cvat",
        model_name="shapes",
        version="v1",
        tflite=False,
        preview_images=1,
        storage_conn_id="aws_default",
    ).execute({})
    send_model_report(outcome, ["ml@example.com"])
    [message] = smtp_server.wait(1)
    body = html_of(message)
    href = body.split("Model: <a href='")[1].split("'")[0].replace("&amp;", "&")
    assert "Signature=" in href and f"/{s3_bucket}/cvat/models/shapes/v1/model_card.md" in href
    with urllib.request.urlopen(href) as response:  # the link really serves the model card
        assert response.read().decode().startswith("# shapes v1")
    assert f"s3://{s3_bucket}/cvat/models/shapes/v1/" in body
    assert "testing" not in message.get_body(preferencelist=("plain",)).get_content()
    assert set(inline_images(message)) == {"training.png", "preview-0.png"}


def test_recipients_precedence_and_scrub():
    class Run:
        conf = {"emails": "a@x.org; b@x.org a@x.org"}

    assert recipients({"dag_run": Run(), "params": {"emails": ["p@x.org"]}}, "f@x.org") == [
        "a@x.org",
        "b@x.org",
    ]
    Run.conf = {}
    assert recipients({"dag_run": Run(), "params": {"emails": ["p@x.org"]}}, "f@x.org") == ["p@x.org"]
    assert recipients({"dag_run": Run(), "params": {}}, ["f@x.org"]) == ["f@x.org"]
    assert recipients({}, None) == []
    text = scrub("failed s3://AKIA:hunter2@host/x https://h/k?X-Amz-Signature=abc&x=1")
    assert "hunter2" not in text and "abc" not in text and "s3://***@host/x" in text


FAILING_DAG = """
from airflow.sdk import DAG, task
from airflow_cvat.notifications.email import CVATEmailNotifier

with DAG("cvat_email_failure", schedule=None, params={"emails": ["dag-default@example.com"]},
         default_args={"on_failure_callback": CVATEmailNotifier(to="fallback@example.com")}):

    @task
    def export():
        return "ok"

    @task
    def train(_):
        raise RuntimeError("trainer exited with 1 reading s3://AKIAXXX:hunter2@minio:9000/runs/r1")

    train(export())
"""


def test_failure_email_from_a_dag_run(run_dag, smtp_server):
    run = run_dag(FAILING_DAG, "cvat_email_failure", conf={"emails": ["ops@example.com"]})
    assert task_states(run)["train"].endswith("failed")
    [message] = smtp_server.wait(1)
    assert smtp_server.envelopes[0][1] == ["ops@example.com"]
    assert message["Subject"] == "[CVAT model] FAILED: cvat_email_failure / train"
    body = html_of(message)
    assert "task train failed" in body and "RuntimeError: trainer exited with 1" in body
    assert "/dags/cvat_email_failure/runs/" in body and "/tasks/train" in body
    assert "hunter2" not in message.as_string()


SUCCESS_DAG = """
import json
from airflow.sdk import DAG, task
from airflow_cvat.notifications.email import CVATEmailNotifier, ModelReportEmailOperator

OUTCOME = json.loads({outcome!r})

with DAG("cvat_email_success", schedule=None, params={{"emails": ["team@example.com"]}}):

    @task(task_id="publish")
    def publish():
        return OUTCOME

    outcome = publish()
    ModelReportEmailOperator(task_id="report", outcome=outcome)

    @task(task_id="done", on_success_callback=CVATEmailNotifier(publish_task_id="publish"))
    def done():
        return None

    outcome >> done()
"""


def test_success_report_from_a_dag_run(run_dag, smtp_server, published):
    source = SUCCESS_DAG.format(outcome=json.dumps(published))
    run = run_dag(source, "cvat_email_success")
    assert set(task_states(run).values()) == {"success"}, task_states(run)
    messages = smtp_server.wait(2)
    assert all(m["Subject"].startswith("[CVAT model] shapes v1: LATEST moved") for m in messages)
    assert all(to == ["team@example.com"] for _, to in smtp_server.envelopes)
    assert all(len(inline_images(m)) == 4 for m in messages)
    assert Path(published["uri"].removeprefix("file://")).is_dir()


def test_report_written_to_a_file_without_smtp(published, tmp_path):
    from email import message_from_bytes, policy

    from airflow_cvat.notifications.email import send

    saved = send(build_report(published), ["ml@example.com"], None, save_dir=str(tmp_path / "mail"))
    message = message_from_bytes(saved.read_bytes(), policy=policy.default)
    assert message["To"] == "ml@example.com" and "LATEST moved" in message["Subject"]
    assert len(inline_images(message)) == 4


def test_report_says_which_split_trained_and_what_was_dropped(published):
    message = build_report(published)
    data = html_of(message).split("id='training-data'>")[1].split("</ul>")[0]
    items = re.findall(r"<li>([^<]*)</li>", data)
    assert items[0] == "split: subsets: Train 12 / Validation 4 / Test 2"
    assert "dropped images: image_not_in_zip 6" in items
    assert "dropped shapes: degenerate_box 1, unsupported_tag 2; clipped to the image: 1" in items
    assert "labels left out of the model: weather (tag label)" in items
    assert "- dropped images: image_not_in_zip 6" in message.get_body(("plain",)).get_content()
    test_line = "Test subset (2 images, never trained on): AP50 0.600, AP 0.350, AP75 0.300"
    assert test_line in html_of(message) and test_line in message.get_body(("plain",)).get_content()
