"""The artifact layout under the root, and the one way a run id becomes a folder name.

Why one owner: the export writes ``{root}/datasets/{source}/{run}/`` and training writes
``{root}/runs/{run}/``; when two helpers turned the same run id into a folder name, the same run
got two different names. Every path here is a string URI (``s3://...``, ``file:///...``), joined
with ``/``; callers wrap it in ObjectStoragePath when they read or write. Standard library only,
so the Airflow side and the trainer may both import it.

    {root}/datasets/{source}/{run_id}/     the CVAT export(s) and manifest.json
    {root}/base_models/{name}/             pulled base checkpoints
    {root}/runs/{run_id}/                  checkpoints, events, metrics.json (a retry resumes here)
    {root}/models/{name}/{version}/        the published model; LATEST beside the versions
"""

from __future__ import annotations

import re

_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]+")


def safe_run_id(run_id: str) -> str:
    """A run id usable as one path segment anywhere (``:`` and ``+`` are awkward in URLs and S3)."""
    return _UNSAFE.sub("_", run_id).strip("_") or "run"


def _under(root: str, *parts: str) -> str:
    return "/".join((root.rstrip("/"), *parts))


def dataset_uri(root: str, source_key: str, run_id: str) -> str:
    """``{root}/datasets/{source_key}/{run}``: exports of one source side by side, so they compare."""
    return _under(root, "datasets", source_key, safe_run_id(run_id))


def run_uri(root: str, run_id: str) -> str:
    """``{root}/runs/{run}``: the same for every try of a run, so a retry resumes from checkpoints."""
    return _under(root, "runs", safe_run_id(run_id))
