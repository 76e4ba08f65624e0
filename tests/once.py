"""Build an expensive session resource once per test run, even when pytest-xdist runs several
worker processes (each worker has its own session, so a plain session fixture would build the
resource once per worker: the 600-step ssd training twice).

The first worker to ask builds it under an exclusive lock in the run's shared temporary folder
and writes the value there as JSON; the others wait on the lock and read it. Without xdist it is
just the build. A failed build is recorded too: the other workers fail with its message instead
of repeating a long build that already failed.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


def once_per_run(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], Any]) -> Any:
    """``build(folder)`` once per run; returns its (JSON-serialisable) value in every worker."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return build(tmp_path_factory.mktemp(name))
    shared = tmp_path_factory.getbasetemp().parent  # the run's folder, above each worker's own
    value_file = shared / f"{name}.json"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if value_file.exists():
            recorded = json.loads(value_file.read_text())
            if "failed" in recorded:
                pytest.fail(f"{name} failed in another worker: {recorded['failed']}")
            return recorded["value"]
        folder = shared / name
        folder.mkdir()
        try:
            recorded = {"value": build(folder)}
        except BaseException as error:
            recorded = {"failed": f"{type(error).__name__}: {error}"[-4000:]}
            raise
        finally:
            partial = value_file.with_suffix(".partial")
            partial.write_text(json.dumps(recorded, default=str))
            partial.replace(value_file)
        return recorded["value"]
