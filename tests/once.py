"""Build an expensive session resource once per test run, even when pytest-xdist runs several
worker processes (each worker has its own session, so a plain session fixture would build the
resource once per worker: the 600-step ssd training twice).

The first worker to ask builds it under an exclusive lock in the run's shared temporary folder
and writes the value there as JSON; the others wait on the lock and read it. Without xdist it is
just the build. A failed build is recorded too: later asks, in any worker, fail with its message
instead of repeating a long build that already failed.

Each process also keeps what it built or read, so a test may ask again instead of relying on a
module fixture: the parallel schedule interleaves modules on a worker, and pytest tears a module
fixture down whenever the next test comes from another module.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

_recorded: dict[str, dict[str, Any]] = {}
"""This process's outcome per name: ``{"value": ...}`` or ``{"failed": "why"}``."""


def once_per_run(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], Any]) -> Any:
    """``build(folder)`` once per run; returns its value (as JSON gives it back) in every worker."""
    if name not in _recorded:
        _build_or_read(tmp_path_factory, name, build)
    recorded = _recorded[name]
    if "failed" in recorded:
        pytest.fail(f"{name} failed earlier in this run: {recorded['failed']}")
    return recorded["value"]


def _build_or_read(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], Any]) -> None:
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        _build(name, build, tmp_path_factory.mktemp(name))
        return
    shared = tmp_path_factory.getbasetemp().parent  # the run's folder, above each worker's own
    value_file = shared / f"{name}.json"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if value_file.exists():
            _recorded[name] = json.loads(value_file.read_text())
            return
        folder = shared / name
        folder.mkdir()
        try:
            _build(name, build, folder)
        finally:
            partial = value_file.with_suffix(".partial")
            partial.write_text(json.dumps(_recorded[name]))
            partial.replace(value_file)


def _build(name: str, build: Callable[[Path], Any], folder: Path) -> None:
    """Record the build's value or its failure (then re-raise it: this test shows the real error)."""
    try:
        _recorded[name] = {"value": json.loads(json.dumps(build(folder), default=str))}
    except BaseException as error:
        _recorded[name] = {"failed": f"{type(error).__name__}: {error}"[-4000:]}
        raise
