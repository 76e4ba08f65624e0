"""The shared contracts read by both worlds: the result envelope, the pre-annotation request, the CVAT policy.

Pure and fast: no Airflow, no TensorFlow, no server.
"""

from __future__ import annotations

import json

import pytest

from airflow_cvat import cvat_policy, envelope
from airflow_cvat.preannotation_request import (
    ModelNotFound,
    PreAnnotationRequest,
    RequestError,
    locate_model,
    version_of,
)


def test_emit_writes_the_result_file_whole_and_read_result_prefers_it(tmp_path, capsys) -> None:
    result_file = str(tmp_path / "deep" / "result.json")
    code = envelope.emit({"status": "ok", "frames": 3}, envelope.EXIT_OK, result_file)
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert code == 0 and json.loads(printed) == {"frames": 3, "status": "ok"}
    assert not (tmp_path / "deep" / "result.json.partial").exists()
    assert envelope.read_result(result_file, ["noise", printed.replace("3", "4")])["frames"] == 3
    assert envelope.read_result(str(tmp_path / "missing.json"), [printed, "a late log line"])["frames"] == 3
    assert envelope.read_result(None, ["no JSON here"]) is None


def test_emit_still_prints_when_the_result_file_cannot_be_written(tmp_path, capsys) -> None:
    (tmp_path / "file").write_text("")
    code = envelope.emit(envelope.failure("bad"), envelope.EXIT_BAD_INPUT, str(tmp_path / "file" / "r.json"))
    captured = capsys.readouterr()
    assert code == 2 and json.loads(captured.out) == {"status": "error", "error": "bad"}
    assert "cannot write the result file" in captured.err
    assert envelope.crash(KeyError("x")) == {"status": "error", "error": "KeyError: 'x'"}


def test_request_argv_round_trips_and_sends_tuning_only_when_set() -> None:
    request = PreAnnotationRequest(
        model_uri="s3://b/models/m",
        cvat_url="https://cvat.example.com",
        task_ids=(4, 5),
        job_ids=(7,),
        job_states=("new", "rejected"),
        threshold=0.4,
        masks="mask",
        workers=2,
        result_file="/airflow/xcom/return.json",
    )
    argv = request.to_argv()
    assert "--workers" in argv and "--quality" not in argv and "--upload-every" not in argv
    assert PreAnnotationRequest.from_argv(argv) == request


def test_request_reports_every_problem_at_once() -> None:
    with pytest.raises(RequestError) as caught:
        PreAnnotationRequest.from_argv(
            ["--model-uri", "m", "--cvat-url", "ftp://x", "--task-id", "0", "--threshold", "1.5",
             "--job-states", "done", "--batch-size", "0"]
        )  # fmt: skip
    message = str(caught.value)
    for flag in (
        "--cvat-url",
        "--task-id",
        "--threshold must be within 0..1",
        "--job-states",
        "--batch-size",
    ):
        assert flag in message
    options = PreAnnotationRequest("m", "", (), threshold="x", existing="keep")  # type: ignore[arg-type]
    assert [p.split(" ")[0] for p in options.option_problems()] == ["threshold", "existing"]


def test_locate_model_three_forms() -> None:
    files = {"s3://b/models/m/v1/saved_model/saved_model.pb", "s3://b/models/m/LATEST"}
    assert locate_model("s3://b/models/m/v1/", files.__contains__) == ("s3://b/models/m/v1", True)
    assert locate_model("s3://b/models/m", files.__contains__) == ("s3://b/models/m/LATEST", False)
    assert locate_model("s3://b/models/m/LATEST", files.__contains__) == ("s3://b/models/m/LATEST", False)
    with pytest.raises(ModelNotFound, match="no model at s3://b/models/x .no published model"):
        locate_model("s3://b/models/x", files.__contains__)
    assert version_of("s3://b/models/m/LATEST", '{"version": "v1"}') == "s3://b/models/m/v1"
    with pytest.raises(ModelNotFound, match="not JSON naming a version"):
        version_of("s3://b/models/m/LATEST", "v1")


def test_cvat_policy_credentials_round_trip_and_hide_the_secret() -> None:
    token = cvat_policy.Credentials(token="s3cret", organization="org", verify_ssl=False)
    assert cvat_policy.Credentials.from_env(token.to_env()) == token
    assert "s3cret" not in repr(token)
    user = cvat_policy.Credentials.from_env({"CVAT_USERNAME": "ann", "CVAT_PASSWORD": "pw"})
    assert (user.username, user.password, user.verify_ssl) == ("ann", "pw", True)
    with pytest.raises(cvat_policy.MissingCredentials, match="never on the command line"):
        cvat_policy.Credentials.from_env({"CVAT_USERNAME": "ann"})


def test_cvat_policy_retries_transient_faults_only() -> None:
    assert [s for s in (400, 401, 404, 429, 500, 503) if cvat_policy.is_refusal(s)] == [400, 401, 404]
    assert [cvat_policy.backoff_seconds(a) for a in (1, 2, 3, 4)] == [2, 4, 8, 10]
    settings = cvat_policy.retry_settings(3, 0.5)
    assert (
        settings["status_forcelist"] == cvat_policy.RETRY_STATUSES
        and "PATCH" not in settings["allowed_methods"]
    )
    assert cvat_policy.error_detail(b'{"detail": "Not found."}') == "Not found."
    assert cvat_policy.error_detail('{"name": ["required"]}') == '{"name": ["required"]}'
    assert cvat_policy.error_detail(None) == "(empty answer)"
