"""The result envelope of the trainer's command lines: what a command prints last, and its exit code.

Every command run by an operator (``python -m airflow_cvat.trainer ...``,
``python -m airflow_cvat.trainer.preannotate``) ends the same way, so that one reader serves the
local subprocess and the pod alike:

* the last stdout line is one JSON object, ``{"status": "ok", ...}`` or
  ``{"status": "error", "error": "..."}``;
* the exit code says whether a retry can help: 0 ok, 1 failed (a retry may help), 2 bad input
  (fix the input first);
* with ``--result-file`` the same object is written to that file too (a pod's XCom), atomically:
  a reader never sees half of it.

Standard library only: both the trainer image and the Airflow side import it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
OK, ERROR = "ok", "error"


class BadInput(ValueError):
    """Input the user must fix (exit 2): retrying will not help, fixing the input will."""


def failure(message: str) -> dict[str, Any]:
    """The error envelope: what went wrong, in words a person can act on."""
    return {"status": ERROR, "error": message}


def crash(error: BaseException) -> dict[str, Any]:
    """The error envelope of an unexpected exception: its type names the kind of fault."""
    return failure(f"{type(error).__name__}: {error}")


def write_atomically(path: str, text: str) -> None:
    """Write to a temporary name, then rename: a reader sees the whole file or none of it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = f"{path}.partial"
    with open(partial, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(partial, path)


def emit(payload: dict[str, Any], code: int, result_file: str | None = None) -> int:
    """Print ``payload`` as the last stdout line (and into ``result_file``); return ``code``.

    stderr is flushed first so that progress lines never land after the JSON line in a merged log.
    A result file that cannot be written is reported on stderr, not raised: the stdout line is
    what :func:`read_result` falls back to.
    """
    text = json.dumps(payload, sort_keys=True, default=str)
    if result_file:
        try:
            write_atomically(result_file, text)
        except OSError as error:  # the stdout line below still carries the result
            print(f"cannot write the result file {result_file}: {error}", file=sys.stderr)
    sys.stderr.flush()
    print(text, flush=True)
    return code


def read_result(result_file: str | None, tail: Sequence[str]) -> dict[str, Any] | None:
    """A command's JSON result: the result file, else the last of its final stdout lines that is JSON.

    Why both: the file survives output interleaved with late log lines; stdout is what is left
    when the command died before writing it (or when no file was asked for).
    """
    candidates: list[str] = []
    if result_file and os.path.exists(result_file):
        with open(result_file, encoding="utf-8") as handle:
            candidates.append(handle.read())
    candidates += reversed(list(tail)[-3:])
    for text in candidates:
        try:
            value = json.loads(text)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None
