"""The webhook bridge inside the real api-server app on loopback, over the SQLite metadata DB.

Real CVAT deliveries (raw bytes and signatures, secret ``fixture-secret``) and variations of them
are POSTed to ``/cvat/webhook``; each test asserts which DAG runs the DB holds afterwards.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable

import pytest
import requests

from airflow_cvat.webhook.rules import sign
from tests.fixtures.webhooks import (
    FIXTURE_SECRET,
    ApiServer,
    Delivery,
    dag_runs,
    deliveries,
)

JOB_COMPLETED = 7  # index of the recorded update:job (job 3 of task 2 in project 1 -> completed)
PING = 8


def post(server: ApiServer, body: bytes, signature: str | None, **headers: str) -> requests.Response:
    sent = {"Content-Type": "application/json", **headers}
    if signature is not None:
        sent["X-Signature-256"] = signature
    return requests.post(server.webhook_url, data=body, headers=sent, timeout=10)


def replay(server: ApiServer, delivery: Delivery) -> requests.Response:
    """Send a recorded delivery exactly: same bytes, same signature, same content type."""
    return post(server, delivery.body, delivery.signature, **{"User-Agent": delivery.headers["User-Agent"]})


def variant(change: Callable[[dict], None], base: int = JOB_COMPLETED) -> bytes:
    """The recorded update:job, changed by ``change``; signed by ``signed`` below."""
    event = copy.deepcopy(deliveries()[base].event)
    change(event)
    return json.dumps(event).encode()


def signed(server: ApiServer, body: bytes) -> requests.Response:
    return post(server, body, sign(FIXTURE_SECRET, body))


def job_completed(job_id: int, task_id: int, project_id: int | None, updated: str) -> bytes:
    def change(event: dict) -> None:
        event["job"].update(id=job_id, task_id=task_id, project_id=project_id, updated_date=updated)

    return variant(change)


# ---------------------------------------------------------------------------------------------
# The recorded deliveries
# ---------------------------------------------------------------------------------------------


def test_recorded_deliveries_start_exactly_one_run(airflow_api, webhook_dags, webhook_conn) -> None:
    """All nine real deliveries in order: only the job completion starts a run, with project conf."""
    answers = [replay(airflow_api, d) for d in deliveries()]
    statuses = [
        (d.event["event"], a.status_code, a.json()["status"])
        for d, a in zip(deliveries(), answers, strict=True)
    ]
    assert statuses == [
        ("create:task", 200, "ignored"),
        ("update:task", 200, "ignored"),
        ("update:task", 200, "ignored"),
        ("create:job", 200, "ignored"),
        ("update:task", 200, "ignored"),
        ("update:task", 200, "ignored"),
        ("update:task", 200, "ignored"),
        ("update:job", 202, "queued"),
        ("ping", 200, "pong"),
    ]
    runs = dag_runs("cvat_retrain")
    assert len(runs) == 1
    run = runs[0]
    assert run["run_id"] == answers[JOB_COMPLETED].json()["dag_run_id"]
    assert run["run_id"].startswith("cvat_webhook__project_1__")
    assert run["conf"] == {"project_id": 1}
    assert run["state"] == "queued"
    assert run["run_type"] == "manual"
    assert run["triggered_by"] == "DagRunTriggeredByType.REST_API"
    assert run["logical_date"] is None
    assert "job 3 of task 2" in run["note"] and "state new -> completed" in run["note"]
    assert dag_runs("cvat_other") == []


def test_redelivery_gives_one_run(airflow_api, webhook_dags, webhook_conn) -> None:
    """The same delivery three times, and once re-serialized with another key order (as a CVAT
    redelivery from its stored payload may be): one run."""
    delivery = deliveries()[JOB_COMPLETED]
    first = replay(airflow_api, delivery)
    again = [replay(airflow_api, delivery) for _ in range(2)]
    reordered = json.dumps(dict(reversed(list(delivery.event.items())))).encode()
    assert reordered != delivery.body
    last = signed(airflow_api, reordered)
    assert first.status_code == 202
    assert [a.status_code for a in again] + [last.status_code] == [200, 200, 200]
    assert {a.json()["status"] for a in [*again, last]} == {"merged"}
    assert {a.json()["dag_run_id"] for a in [first, *again, last]} == {first.json()["dag_run_id"]}
    assert len(dag_runs("cvat_retrain")) == 1


def test_ten_completions_within_the_window_start_one_run(airflow_api, webhook_dags, webhook_conn) -> None:
    """Ten jobs of project 1 finishing within two minutes, delivered concurrently: one run."""
    webhook_conn(cooldown_seconds=600)
    bodies = [
        job_completed(10 + i, 2 + i % 3, 1, f"2026-11-25T07:0{i // 5}:{10 + 5 * i:02d}.000000Z")
        for i in range(10)
    ]
    answers: list[requests.Response] = []
    lock = threading.Lock()

    def send(body: bytes) -> None:
        answer = signed(airflow_api, body)
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=send, args=(b,)) for b in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(a.status_code for a in answers) == [200] * 9 + [202]
    assert len({a.json()["dag_run_id"] for a in answers}) == 1
    runs = dag_runs("cvat_retrain")
    assert [r["conf"] for r in runs] == [{"project_id": 1}]
    assert runs[0]["run_id"] == "cvat_webhook__project_1__20261125T070000Z"


def test_next_window_starts_a_new_run(airflow_api, webhook_dags, webhook_conn) -> None:
    webhook_conn(cooldown_seconds=300)
    assert signed(airflow_api, job_completed(3, 2, 1, "2026-11-25T07:01:00Z")).status_code == 202
    assert signed(airflow_api, job_completed(4, 2, 1, "2026-11-25T07:04:59Z")).status_code == 200
    assert signed(airflow_api, job_completed(5, 2, 1, "2026-11-25T07:05:00Z")).status_code == 202
    assert [r["run_id"] for r in dag_runs("cvat_retrain")] == [
        "cvat_webhook__project_1__20261125T070000Z",
        "cvat_webhook__project_1__20261125T070500Z",
    ]


def test_cooldown_zero_one_run_per_event(airflow_api, webhook_dags, webhook_conn) -> None:
    webhook_conn(cooldown_seconds=0)
    for job_id in (3, 4):
        body = job_completed(job_id, 2, 1, "2026-11-25T07:01:00Z")
        assert signed(airflow_api, body).status_code == 202
        assert signed(airflow_api, body).status_code == 200  # its redelivery
    assert len(dag_runs("cvat_retrain")) == 2


def test_task_without_project_routes_to_task_ids(airflow_api, webhook_dags, webhook_conn) -> None:
    answer = signed(airflow_api, job_completed(7, 5, None, "2026-11-25T07:01:00Z"))
    assert answer.status_code == 202
    assert [r["conf"] for r in dag_runs("cvat_retrain")] == [{"task_ids": [5]}]


def test_configured_routes(airflow_api, webhook_dags, webhook_conn) -> None:
    """Per-project and per-task routes from the connection extra: DAG, conf, disabled projects."""
    webhook_conn(
        conf={"model": "ssd-mobilenet-v2-coco", "emails": ["team@example.com"]},
        projects={"1": {"dag_id": "cvat_other", "conf": {"arguments": "epochs=10"}}, "9": {"enabled": False}},
        tasks={"5": {"conf": {"model": "frcnn-res50-coco", "execution": "kubernetes"}}},
    )
    assert signed(airflow_api, job_completed(3, 2, 1, "2026-11-25T07:01:00Z")).status_code == 202
    assert signed(airflow_api, job_completed(4, 5, None, "2026-11-25T07:01:00Z")).status_code == 202
    ignored = signed(airflow_api, job_completed(6, 8, 9, "2026-11-25T07:01:00Z"))
    assert ignored.status_code == 200 and ignored.json()["status"] == "ignored"
    assert [r["conf"] for r in dag_runs("cvat_other")] == [
        {
            "project_id": 1,
            "model": "ssd-mobilenet-v2-coco",
            "emails": ["team@example.com"],
            "arguments": "epochs=10",
        }
    ]
    assert [r["conf"] for r in dag_runs("cvat_retrain")] == [
        {
            "task_ids": [5],
            "model": "frcnn-res50-coco",
            "emails": ["team@example.com"],
            "execution": "kubernetes",
        }
    ]


@pytest.mark.parametrize(
    ("name", "change"),
    [
        ("ground-truth job", lambda e: e["job"].update(type="ground_truth")),
        (
            "state not completed",
            lambda e: (e["job"].update(state="in progress"), e["before_update"].update(state="new")),
        ),
        ("already completed, other field changed", lambda e: e["before_update"].pop("state")),
        ("create:job", lambda e: (e.update(event="create:job"), e.pop("before_update"))),
        ("update:issue", lambda e: e.update(event="update:issue")),
    ],
)
def test_irrelevant_events_start_nothing(airflow_api, webhook_dags, webhook_conn, name, change) -> None:
    answer = signed(airflow_api, variant(change))
    assert (answer.status_code, answer.json()["status"]) == (200, "ignored"), name
    assert dag_runs("cvat_retrain") == []


def test_stage_acceptance_rule_when_configured(airflow_api, webhook_dags, webhook_conn) -> None:
    """With the "job-accepted" preset, a stage change to acceptance starts a run, completion alone not."""
    webhook_conn(rules="job-accepted")

    def completed_only(event: dict) -> None:
        event["job"]["stage"] = "annotation"
        event["before_update"].pop("stage")

    def accepted_only(event: dict) -> None:
        event["job"]["updated_date"] = "2026-11-25T08:00:00Z"
        event["before_update"]["state"] = "completed"

    assert signed(airflow_api, variant(completed_only)).json()["status"] == "ignored"
    assert signed(airflow_api, variant(accepted_only)).status_code == 202
    assert len(dag_runs("cvat_retrain")) == 1


# ---------------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "signature",
    [
        None,
        "",
        "sha256=" + "0" * 64,
        "sha1=" + "0" * 40,
        "not-a-signature",
        sign("another-secret", b"x"),
    ],
)
def test_missing_or_wrong_signature_is_401(airflow_api, webhook_dags, webhook_conn, signature) -> None:
    answer = post(airflow_api, deliveries()[JOB_COMPLETED].body, signature)
    assert answer.status_code == 401
    assert dag_runs("cvat_retrain") == []


def test_signature_of_another_body_is_401(airflow_api, webhook_dags, webhook_conn) -> None:
    delivery = deliveries()[JOB_COMPLETED]
    tampered = delivery.body.replace(b'"project_id": 1', b'"project_id": 2')
    assert post(airflow_api, tampered, delivery.signature).status_code == 401
    assert dag_runs("cvat_retrain") == []


def test_wrong_secret_configured_is_401(airflow_api, webhook_dags, webhook_conn) -> None:
    webhook_conn("rotated-secret")
    assert replay(airflow_api, deliveries()[JOB_COMPLETED]).status_code == 401
    assert dag_runs("cvat_retrain") == []


def test_unconfigured_bridge_is_503(airflow_api, webhook_dags, webhook_conn, monkeypatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_CVAT_WEBHOOK")
    assert replay(airflow_api, deliveries()[JOB_COMPLETED]).status_code == 503
    webhook_conn(secret=None)
    assert replay(airflow_api, deliveries()[JOB_COMPLETED]).status_code == 503
    assert dag_runs("cvat_retrain") == []


def test_oversize_body_is_413(airflow_api, webhook_dags, webhook_conn) -> None:
    """Refused from Content-Length, and from the streamed size when the body is chunked."""
    big = b'{"event": "update:job", "pad": "' + b"x" * (1024 * 1024) + b'"}'
    assert post(airflow_api, big, sign(FIXTURE_SECRET, big)).status_code == 413

    def chunks():
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    answer = requests.post(
        airflow_api.webhook_url,
        data=chunks(),
        headers={"X-Signature-256": sign(FIXTURE_SECRET, big), "Content-Type": "application/json"},
        timeout=10,
    )
    assert answer.status_code == 413
    webhook_conn(max_body_bytes=1000)
    assert replay(airflow_api, deliveries()[JOB_COMPLETED]).status_code == 413
    assert dag_runs("cvat_retrain") == []


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1, 2]", b'{"event": 1}', b'{"hello": "world"}', b'{"event": "update:job"}', b"\xff\xfe"],
)
def test_not_json_or_not_a_cvat_event_is_400(airflow_api, webhook_dags, webhook_conn, body) -> None:
    assert signed(airflow_api, body).status_code == 400
    assert dag_runs("cvat_retrain") == []


def test_ping_is_200_and_starts_nothing(airflow_api, webhook_dags, webhook_conn) -> None:
    answer = replay(airflow_api, deliveries()[PING])
    assert (answer.status_code, answer.json()["status"]) == (200, "pong")
    assert dag_runs("cvat_retrain") == []


def test_unknown_dag_is_404(airflow_api, webhook_dags, webhook_conn) -> None:
    webhook_conn(dag_id="no_such_dag")
    assert replay(airflow_api, deliveries()[JOB_COMPLETED]).status_code == 404


def test_only_post(airflow_api) -> None:
    assert requests.get(airflow_api.webhook_url, timeout=10).status_code == 405


def test_secret_and_signature_never_logged(airflow_api, webhook_dags, webhook_conn, caplog) -> None:
    delivery = deliveries()[JOB_COMPLETED]
    with caplog.at_level("DEBUG"):
        replay(airflow_api, delivery)
        post(airflow_api, delivery.body, "sha256=" + "1" * 64)
    text = caplog.text
    assert FIXTURE_SECRET not in text
    assert delivery.signature.split("=", 1)[1] not in text and "1" * 64 not in text
    assert "rejected a delivery" in text
