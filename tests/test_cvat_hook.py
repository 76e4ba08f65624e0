"""CVATHook against the CVAT double: retries only what is transient, errors that say what to do."""

from __future__ import annotations

import pytest

from airflow_cvat.hooks.cvat import CVATError, CVATHook
from tests.fixtures.airflow import connection_env


@pytest.fixture
def hook(cvat_double, monkeypatch) -> CVATHook:
    key, value = connection_env(
        "cvat_default", conn_type="cvat", host=cvat_double.url, password=cvat_double.DEFAULT_TOKEN
    )
    monkeypatch.setenv(key, value)
    return CVATHook(retry_backoff=0.01, status_check_period=0.01)


def test_token_is_sent_as_bearer(cvat_double, hook):
    task_id = cvat_double.add_task("t", frames=2)
    assert hook.get_task(task_id).name == "t"
    sent = cvat_double.requests_to("GET", rf"/api/tasks/{task_id}$")[0]
    assert sent.header("Authorization") == f"Bearer {cvat_double.DEFAULT_TOKEN}"


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_transient_statuses_are_retried(cvat_double, hook, status):
    task_id = cvat_double.add_task("t", frames=2)
    cvat_double.fail_next("GET", rf"/api/tasks/{task_id}$", status, times=2)
    assert hook.get_task(task_id).id == task_id
    assert len(cvat_double.requests_to("GET", rf"/api/tasks/{task_id}$")) == 3


@pytest.mark.parametrize(
    ("status", "advice"), [(403, "permission"), (400, "arguments"), (404, "does not exist")]
)
def test_other_4xx_are_not_retried(cvat_double, hook, status, advice):
    task_id = cvat_double.add_task("t", frames=2)
    cvat_double.fail_next("GET", rf"/api/tasks/{task_id}$", status, times=5)
    with pytest.raises(CVATError, match=f"answered {status} for task {task_id}.*{advice}"):
        hook.get_task(task_id)
    assert len(cvat_double.requests_to("GET", rf"/api/tasks/{task_id}$")) == 1


def test_gives_up_after_the_retry_budget(cvat_double, hook):
    task_id = cvat_double.add_task("t", frames=2)
    cvat_double.fail_next("GET", rf"/api/tasks/{task_id}$", 503, times=100)
    with pytest.raises(CVATError, match="answered 503.*kept failing after retries"):
        hook.get_task(task_id)
    assert len(cvat_double.requests_to("GET", rf"/api/tasks/{task_id}$")) == hook.retries + 1


def test_unreachable_server_names_it(monkeypatch):
    from tests.fixtures.servers import free_port

    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv(*connection_env("cvat_default", conn_type="cvat", host=url, password="x"))
    with pytest.raises(CVATError, match=f"cannot reach CVAT at {url}"):
        CVATHook(retries=1, retry_backoff=0.01).get_task(1)


def test_test_connection_reports_version_and_user(hook, cvat_double):
    ok, message = hook.test_connection()
    assert ok and "2.73.0" in message and cvat_double.DEFAULT_USERNAME in message


def test_test_connection_with_a_rejected_token(cvat_double, monkeypatch):
    monkeypatch.setenv(
        *connection_env("cvat_default", conn_type="cvat", host=cvat_double.url, password="bad-token-123")
    )
    ok, message = CVATHook().test_connection()
    assert not ok and message.startswith("Credentials rejected") and "personal access token" in message
    assert "bad-token-123" not in message


def test_test_connection_with_a_rejected_password(cvat_double, monkeypatch):
    env = connection_env(
        "cvat_default", conn_type="cvat", host=cvat_double.url, login="annotator", password="wrong-pw"
    )
    monkeypatch.setenv(*env)
    ok, message = CVATHook().test_connection()
    assert not ok and message.startswith("Credentials rejected") and "user 'annotator'" in message
    assert "wrong-pw" not in message


def test_test_connection_with_an_unreachable_server(monkeypatch):
    from tests.fixtures.servers import free_port

    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv(*connection_env("cvat_default", conn_type="cvat", host=url, password="x"))
    ok, message = CVATHook(retry_backoff=0.01).test_connection()
    assert not ok and message.startswith(f"Server unreachable: no answer from {url}")


def test_test_connection_with_an_unknown_organization(cvat_double, monkeypatch):
    """CVAT answers 404 "<slug> organization does not exist." to an unknown X-Organization."""
    conn = connection_env(
        "cvat_default",
        conn_type="cvat",
        host=cvat_double.url,
        password=cvat_double.DEFAULT_TOKEN,
        extra={"organization": "no-such-team"},
    )
    monkeypatch.setenv(*conn)
    ok, message = CVATHook().test_connection()
    assert not ok and message.startswith("Organization unknown") and "'no-such-team'" in message


def test_test_connection_in_an_organization(cvat_double, monkeypatch):
    cvat_double.add_organization("team-a")
    conn = connection_env(
        "cvat_default",
        conn_type="cvat",
        host=cvat_double.url,
        password=cvat_double.DEFAULT_TOKEN,
        extra={"organization": "team-a"},
    )
    monkeypatch.setenv(*conn)
    ok, message = CVATHook().test_connection()
    assert ok and "in organization 'team-a'" in message


def test_missing_token_is_explained(cvat_double, monkeypatch):
    monkeypatch.setenv(*connection_env("cvat_default", conn_type="cvat", host=cvat_double.url))
    with pytest.raises(CVATError, match="no token or password"):
        CVATHook().get_task(1)
