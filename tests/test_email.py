"""Emails through a real SMTP server (aiosmtpd on 127.0.0.1): the success report with its link,
metrics table and inline images, and the failure email from a DAG run whose task raises."""

from __future__ import annotations

import io
import json
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from airflow_cvat.notifications.email import build_report, recipients, scrub, send_model_report
from airflow_cvat.operators.convert import ConvertModelOperator, storage_path
from tests.fixtures.airflow import task_states
from tests.fixtures.publish import make_run


@pytest.fixture(scope="module")
def published(fake_runs, tmp_path_factory) -> dict:
    """One file:// publish (LATEST moved) shared by the report tests."""
    root = tmp_path_factory.mktemp("email-root")
    run = make_run(fake_runs, root / "runs" / "r1", ap50=0.7)
    operator = ConvertModelOperator(
        task_id="publish",
        run_uri=run.as_uri(),
        root=root.as_uri(),
        model_name="shapes",
        version="v1",
        tflite=False,
        preview_images=3,
    )
    return operator.execute({})


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


def test_success_report_file(published, smtp_server):
    send_model_report(
        published, "ml@example.com, lead@example.com", dag_id="cvat_retrain", run_id="manual__1"
    )
    [message] = smtp_server.wait(1)
    assert smtp_server.envelopes[0][1] == ["ml@example.com", "lead@example.com"]
    assert message["Subject"] == "[CVAT model] shapes v1: LATEST moved (AP50 0.700)"
    assert message["From"] == "airflow@example.com"
    body = html_of(message)
    assert published["uri"] in body and published["uri"].removeprefix("file://") in body
    assert "LATEST now points to this version" in body and "first published model" in body
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


def test_report_says_when_latest_stays_or_model_refused(published):
    stays = dict(
        published,
        latest=dict(
            published["latest"],
            moved=False,
            old_ap50=0.9,
            old_version="v0",
            reason="AP50 0.7000 is worse than LATEST's 0.9000",
        ),
    )
    message = build_report(stays)
    assert "LATEST stays" in message["Subject"] and "LATEST did not move" in html_of(message)
    assert "0.900" in html_of(message) and "v0" in html_of(message)
    refused = dict(
        published,
        published=False,
        files={},
        latest=dict(published["latest"], moved=False, reason="the model is broken: OSError"),
    )
    message = build_report(refused)
    assert "refused" in message["Subject"] and "Not published: the model is broken" in html_of(message)
    assert not inline_images(message)


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
