"""What a pre-annotation task checks and builds when it runs (see
:mod:`airflow_cvat.operators.preannotate`): the rendered fields read as a :class:`Request`, the
published model looked for, the command line.

The rules of the options are the command's own (:mod:`airflow_cvat.preannotation_request`); ids
and true/false are read as everywhere else (:mod:`airflow_cvat.coercion`). Imported when the task
runs, not when the DAG is parsed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from airflow_cvat import coercion
from airflow_cvat.preannotation_request import MODULE as PREANNOTATE_MODULE
from airflow_cvat.preannotation_request import ModelNotFound, PreAnnotationRequest, locate_model


@dataclass(frozen=True)
class Request:
    """The operator's rendered fields, checked: which tasks, and the command's options.

    ``options`` has no server or tasks yet: those are known only when the task runs (the
    connection's URL, a project's tasks); :meth:`command` fills them in.
    """

    task_ids: tuple[int, ...]
    project_id: int | None
    options: PreAnnotationRequest

    @property
    def model_uri(self) -> str:
        return self.options.model_uri

    @property
    def job_ids(self) -> tuple[int, ...]:
        return self.options.job_ids

    def command(
        self, cvat_url: str, task_ids: Sequence[int], result_file: str | None
    ) -> PreAnnotationRequest:
        return self.options.with_target(cvat_url, task_ids, result_file)


def command_argv(
    request: PreAnnotationRequest, python: str, module: str | None = PREANNOTATE_MODULE
) -> list[str]:
    """The whole command line: the interpreter, the module, the request's arguments."""
    return [python, "-m", module or PREANNOTATE_MODULE, *request.to_argv()]


def ids(value: Any, name: str) -> tuple[int, ...]:
    """CVAT ids as :func:`airflow_cvat.coercion.parse_ids` reads them, each once, in order."""
    return tuple(dict.fromkeys(coercion.parse_ids(value, name, AirflowFailException)))


def is_enabled(value: Any) -> bool:
    """``enabled`` as rendered: true/false as :func:`~airflow_cvat.coercion.parse_bool` reads them;
    empty (a null param, rendered natively or as text) is false."""
    if coercion.is_empty(value) or str(value).strip().lower() == "none":
        return False
    return coercion.parse_bool(value, "enabled", AirflowFailException)


def collected(problems: list[str], parse: Any, *args: Any) -> Any:
    """``parse(*args)``, or () with its AirflowFailException's message added to ``problems``."""
    try:
        return parse(*args)
    except AirflowFailException as error:
        problems.append(str(error))
        return ()


def number(value: Any, kind: type) -> Any:
    """``value`` as ``kind`` when it reads as one (templates render text); as given otherwise,
    for the request's check to name."""
    try:
        return kind(value)
    except (TypeError, ValueError):
        return value


def states(value: Any) -> tuple[str, ...]:
    """Job states from a list or comma-separated text, blanks dropped."""
    items = value.split(",") if isinstance(value, str) else value
    return tuple(str(s).strip() for s in (items or ()) if str(s).strip())


def check_published_model(uri: str, conn_id: str | None) -> None:
    """Fail now when nothing is published at ``uri`` (the command would fail the same way, later)."""
    from airflow_cvat.operators.convert import storage_path

    try:
        locate_model(uri, lambda candidate: storage_path(candidate, conn_id).exists())
    except ModelNotFound as error:
        raise AirflowFailException(str(error)) from None
