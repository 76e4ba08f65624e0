"""Running a command in a subprocess of the worker, its output streamed into the task log.

Shared by the local backends of training and pre-annotation (:class:`LocalCommand`) and by
:class:`~airflow_cvat.operators.convert.ConvertModelOperator`'s TensorFlow half: one runner
(:func:`run_with_result`) and one check of its envelope (:func:`checked_result`), so
environment scrubbing, streaming, timeouts, clean-up and results behave the same everywhere.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_cvat.envelope import OK, read_result

AIRFLOW_SECRET_PREFIXES = ("AIRFLOW_CONN_", "AIRFLOW_VAR_")
"""Connections and Variables given as environment variables: never for a child process."""
LogLine = Callable[..., Any]
"""Called as ``log_line("%s", line)``, like ``logger.info``."""


def subprocess_environment(drop: tuple[str, ...], extra: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The worker's environment without variables starting with ``drop``, plus ``extra``.

    Unbuffered output, so lines reach the task log as they are printed; TensorFlow's C++
    start-up chatter is turned down unless the caller chose a level.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update({str(k): str(v) for k, v in (extra or {}).items()})
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def worker_environment(extra: Mapping[str, Any] | None, storage_conn_id: str | None) -> dict[str, str]:
    """The worker's environment without Airflow's secrets, plus ``extra`` and the storage credentials."""
    return {**subprocess_environment(AIRFLOW_SECRET_PREFIXES, extra), **aws_environment(storage_conn_id)}


def aws_environment(conn_id: str | None) -> dict[str, str]:
    """AWS_* variables for a command from an Airflow AWS connection (secrets masked in logs)."""
    if not conn_id:
        return {}
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
    from airflow.sdk.log import mask_secret

    hook = AwsBaseHook(aws_conn_id=conn_id, client_type="s3")
    credentials = hook.get_credentials()
    env = {
        "AWS_ACCESS_KEY_ID": credentials.access_key,
        "AWS_SECRET_ACCESS_KEY": credentials.secret_key,
        "AWS_SESSION_TOKEN": credentials.token,
        "AWS_DEFAULT_REGION": hook.conn_region_name,
        "AWS_ENDPOINT_URL": hook.conn_config.endpoint_url,
    }
    for key in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        if env[key]:
            mask_secret(env[key])
    return {k: str(v) for k, v in env.items() if v}


class Finished(NamedTuple):
    """How a streamed command ended: exit code, last non-blank lines, whether the timeout stopped it."""

    code: int
    tail: list[str]
    timed_out: bool = False


def run_streamed(
    argv: list[str],
    env: dict[str, str],
    log_line: LogLine,
    started: Callable[[subprocess.Popen], Any] | None = None,
    *,
    timeout: float | None = None,
    keep: int | None = 40,
) -> Finished:
    """Run a command with its output streamed line by line into ``log_line``.

    ``started(process)`` is called once the process exists (an operator keeps it for on_kill).
    The process gets its own session, so killing its group stops it and anything it started.
    With a ``timeout`` this call owns the process's lifetime: the group is killed when the time is
    up (reading the pipe alone would wait for ever on a hung command) or when reading ends early
    (an exception here). Without one, the caller's ``on_kill`` stops it. ``keep``: how many of the
    last non-blank lines to return (None: all).
    """
    tail: deque[str] = deque(maxlen=keep)
    process = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        text=True,
        bufsize=1,
        start_new_session=True,
    )
    if started is not None:
        started(process)
    timed_out = threading.Event()
    watchdog = _watchdog(process, timeout, timed_out)
    try:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip("\n")
            log_line("%s", line)
            if line.strip():
                tail.append(line)
        code = process.wait()
    finally:
        if watchdog is not None:
            watchdog.cancel()
            _kill_group(process, signal.SIGKILL)
    return Finished(code, list(tail), timed_out.is_set())


def _watchdog(
    process: subprocess.Popen, timeout: float | None, fired: threading.Event
) -> threading.Timer | None:
    """A timer that kills the process group after ``timeout`` seconds and sets ``fired``."""
    if timeout is None:
        return None

    def kill() -> None:
        fired.set()
        _kill_group(process, signal.SIGKILL)

    watchdog = threading.Timer(timeout, kill)
    watchdog.daemon = True
    watchdog.start()
    return watchdog


def _kill_group(process: subprocess.Popen, sig: int) -> None:
    """Signal the process's session group, if the process still runs."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass


def run_with_result(
    argv_for: Callable[[str], list[str]],
    env: dict[str, str],
    log_line: LogLine,
    *,
    prefix: str,
    message: str,
    started: Callable[[subprocess.Popen], Any] | None = None,
    timeout: float | None = None,
) -> tuple[Finished, dict[str, Any] | None]:
    """Run ``argv_for(result_file)`` (logged with ``message``), streamed; (how it ended, its result).

    The result is the command's envelope (:mod:`airflow_cvat.envelope`), read by its one reader
    from the ``--result-file`` given to the command, else from its last stdout lines.
    """
    with tempfile.TemporaryDirectory(prefix=prefix) as scratch:
        result_file = os.path.join(scratch, "result.json")
        argv = argv_for(result_file)
        log_line(message, shlex.join(argv))
        finished = run_streamed(argv, env, log_line, started, timeout=timeout)
        return finished, read_result(result_file, finished.tail)


def checked_result(
    finished: Finished,
    result: dict[str, Any] | None,
    *,
    command: str,
    work: str,
    bad_input_codes: Iterable[int] = (),
) -> dict[str, Any]:
    """The result of an ``{"status": "ok"}`` run; otherwise the error, named ``{work} failed``.

    ``command`` names what ran in the crash messages ("the trainer"); an exit code in
    ``bad_input_codes`` (e.g. :data:`airflow_cvat.envelope.EXIT_BAD_INPUT`) means retrying cannot
    help (AirflowFailException).
    """
    code = finished.code
    if code == 0 and result is not None and result.get("status") == OK:
        return result
    if result is not None and result.get("status") == "error":
        error = AirflowFailException if code in tuple(bad_input_codes) else AirflowException
        raise error(f"{work} failed: {result.get('error') or result}")
    last = "\n".join(finished.tail[-15:])
    if code < 0:
        raise AirflowException(f"{command} was killed by signal {-code}; last output:\n{last}")
    raise AirflowException(f"{command} exited with code {code} and no JSON result; last output:\n{last}")


class LocalCommand:
    """The local backend of an operator: one command in a subprocess, stopped with the task.

    A cooperative mixin placed before the operator's base class; its keyword arguments are the
    local-only ones that :func:`airflow_cvat.operators.backends.backend_operator` drops for Kubernetes.

    :param storage_conn_id: an AWS connection; its credentials, region and endpoint reach the
        command as AWS_* environment variables (never argv, never the log). None: the worker's own.
    :param python: interpreter (default: the worker's, ``sys.executable``).
    :param env: extra, non-secret environment variables for the command.
    """

    log: Any

    def __init__(
        self,
        *,
        storage_conn_id: str | None = None,
        python: str | None = None,
        env: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.storage_conn_id = storage_conn_id
        self.python = python
        self.env = env or {}
        self._process: subprocess.Popen | None = None

    def environment(self) -> dict[str, str]:
        return worker_environment(self.env, self.storage_conn_id)

    def run_command(
        self, argv_for: Callable[[str], list[str]], env: dict[str, str], *, prefix: str, message: str
    ) -> tuple[Finished, dict[str, Any] | None]:
        """Run ``argv_for(result_file)`` (logged with ``message``); (how it ended, its JSON result)."""
        return run_with_result(
            argv_for, env, self.log.info, prefix=prefix, message=message, started=self._started
        )

    def _started(self, process: subprocess.Popen) -> None:
        self._process = process

    def on_kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGTERM)
