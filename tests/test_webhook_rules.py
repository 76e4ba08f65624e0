"""The bridge's decisions on plain dicts: signature, event shape, rules, routing, run ids."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime

import pytest

from airflow_cvat.webhook.rules import (
    BridgeConfig,
    ConfigError,
    WebhookError,
    decide,
    event_key,
    event_time,
    parse_event,
    run_id_for,
    scope_ids,
    sign,
    verify_signature,
)
from tests.fixtures.webhooks import FIXTURE_SECRET, deliveries

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def completed_job() -> dict:
    return copy.deepcopy(deliveries()[7].event)


def test_recorded_signatures_verify() -> None:
    for delivery in deliveries():
        assert sign(FIXTURE_SECRET, delivery.body) == delivery.signature
        assert verify_signature(FIXTURE_SECRET, delivery.body, delivery.signature)
        assert not verify_signature("other", delivery.body, delivery.signature)
        assert not verify_signature(FIXTURE_SECRET, delivery.body + b" ", delivery.signature)


@pytest.mark.parametrize("header", [None, "", "sha256=", "sha256=zz", "SHA256=" + "0" * 64, "sha256=é"])
def test_bad_signature_headers(header) -> None:
    assert not verify_signature(FIXTURE_SECRET, b"{}", header)


def test_empty_secret_never_verifies() -> None:
    assert not verify_signature("", b"{}", sign("", b"{}"))


def test_recorded_events_parse() -> None:
    assert [parse_event(d.body)["event"] for d in deliveries()] == [
        "create:task",
        "update:task",
        "update:task",
        "create:job",
        "update:task",
        "update:task",
        "update:task",
        "update:job",
        "ping",
    ]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"nope",
        b"[]",
        b"1",
        b'{"event": "Update Job", "webhook_id": 1}',
        b'{"event": "ping"}',
        b'{"event": "update:job"}',
        b'{"event": "update:job", "webhook_id": "1"}',
    ],
)
def test_not_cvat_events(body) -> None:
    with pytest.raises(WebhookError) as raised:
        parse_event(body)
    assert raised.value.status == 400


def test_default_rule_and_route_on_the_recorded_completion() -> None:
    decision = decide(completed_job(), BridgeConfig(), NOW)
    assert decision.action == "trigger"
    assert (decision.dag_id, dict(decision.conf), decision.route) == (
        "cvat_retrain",
        {"project_id": 1},
        "project_1",
    )
    # updated_date 06:39:04 falls in the 06:35 five-minute window
    assert decision.run_id == "cvat_webhook__project_1__20261125T063500Z"
    assert (
        decision.note == "CVAT webhook update:job job 3 of task 2 (project 1): state new -> completed, "
        "stage annotation -> acceptance, status annotation -> completed by admin"
    )


def test_every_other_recorded_delivery_is_ignored() -> None:
    for index, delivery in enumerate(deliveries()):
        if index != 7:
            assert decide(delivery.event, BridgeConfig(), NOW).action == "ignore", delivery.event["event"]


@pytest.mark.parametrize(
    ("change", "action"),
    [
        (lambda e: e["job"].update(type="ground_truth"), "ignore"),
        (lambda e: e["job"].update(state="rejected"), "ignore"),
        (lambda e: e["before_update"].pop("state"), "ignore"),
        (lambda e: e["before_update"].update(state="completed"), "ignore"),  # not a change
        (lambda e: e["before_update"].update(state="in progress"), "trigger"),
        (lambda e: e["before_update"].update(state="rejected"), "trigger"),
        (lambda e: e.update(event="create:job"), "ignore"),
    ],
)
def test_default_rule_variations(change, action) -> None:
    event = completed_job()
    change(event)
    assert decide(event, BridgeConfig(), NOW).action == action


def test_presets_and_custom_rules() -> None:
    accepted = completed_job()
    accepted["before_update"]["state"] = "completed"  # only the stage changed
    assert decide(accepted, BridgeConfig(), NOW).action == "ignore"
    assert decide(accepted, BridgeConfig.from_extra({"rules": "job-accepted"}), NOW).action == "trigger"
    assert (
        decide(accepted, BridgeConfig.from_extra({"rules": "job-completed-or-accepted"}), NOW).action
        == "trigger"
    )
    assert decide(accepted, BridgeConfig.from_extra({"rules": "any-job-update"}), NOW).action == "trigger"
    custom = {"rules": [{"event": "update:job", "when": {"stage": "acceptance"}, "changed": "stage"}]}
    assert decide(accepted, BridgeConfig.from_extra(custom), NOW).action == "trigger"
    task_done = {
        "event": "update:task",
        "webhook_id": 1,
        "task": {"id": 5, "project_id": None, "status": "completed", "updated_date": "2026-11-25T07:00:00Z"},
        "before_update": {"status": "annotation"},
    }
    decision = decide(task_done, BridgeConfig.from_extra({"rules": "task-completed"}), NOW)
    assert (decision.action, dict(decision.conf)) == ("trigger", {"task_ids": [5]})


def test_routes_most_specific_first() -> None:
    config = BridgeConfig.from_extra(
        {
            "dag_id": "default_dag",
            "conf": {"model": "m", "emails": ["a@x"]},
            "projects": {"1": {"dag_id": "project_dag", "conf": {"arguments": "epochs=5"}}},
            "tasks": {"2": {"conf": {"model": "t"}, "scope": "task", "cooldown_seconds": 0}},
        }
    )
    event = completed_job()
    decision = decide(event, config, NOW)  # task 2 of project 1: the task's entry wins
    assert (decision.dag_id, dict(decision.conf)) == (
        "default_dag",
        {"task_ids": [2], "model": "t", "emails": ["a@x"]},
    )
    assert decision.run_id == f"cvat_webhook__task_2__{event_key(event)}"
    event["job"]["task_id"] = 3
    decision = decide(event, config, NOW)
    assert (decision.dag_id, dict(decision.conf)) == (
        "project_dag",
        {"project_id": 1, "model": "m", "emails": ["a@x"], "arguments": "epochs=5"},
    )


def test_disabled_route_and_unroutable_events() -> None:
    config = BridgeConfig.from_extra({"projects": {"1": {"enabled": False}}})
    assert decide(completed_job(), config, NOW).reason == "routing disabled for task 2"
    event = completed_job()
    event["job"].update(task_id=None, project_id=None)
    assert decide(event, BridgeConfig(), NOW).action == "ignore"


def test_event_key_ignores_key_order_but_not_content() -> None:
    event = completed_job()
    reordered = json.loads(json.dumps(dict(reversed(list(event.items())))))
    assert event_key(reordered) == event_key(event)
    later = completed_job()
    later["job"]["updated_date"] = "2026-11-25T06:40:00Z"
    assert event_key(later) != event_key(event)


def test_run_ids_by_window() -> None:
    at = datetime(2026, 11, 25, 7, 4, 59, tzinfo=UTC)
    assert run_id_for("project_1", at, "k", 300) == "cvat_webhook__project_1__20261125T070000Z"
    assert run_id_for("project_1", at.replace(minute=5, second=0), "k", 300).endswith("T070500Z")
    assert run_id_for("task_3", at, "abc", 0) == "cvat_webhook__task_3__abc"
    assert event_time(completed_job()) == datetime(2026, 11, 25, 6, 39, 4, 390603, tzinfo=UTC)
    no_date = completed_job()
    del no_date["job"]["updated_date"]
    assert decide(no_date, BridgeConfig(), NOW).run_id == "cvat_webhook__project_1__20261125T120000Z"
    assert scope_ids(completed_job()) == (1, 2)


@pytest.mark.parametrize(
    "extra",
    [
        {"unknown": 1},
        {"rules": "no-such-preset"},
        {"rules": []},
        {"rules": [{"when": {}}]},
        {"cooldown_seconds": -1},
        {"cooldown_seconds": "300"},
        {"projects": {"x": {}}},
        {"projects": {"1": {"dag": "typo"}}},
        {"tasks": {"1": {"scope": "job"}}},
        {"conf": []},
    ],
)
def test_invalid_configurations(extra) -> None:
    with pytest.raises(ConfigError):
        BridgeConfig.from_extra(extra)
