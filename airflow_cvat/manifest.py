"""The dataset manifest: the contract between the export operator and the trainer.

Both sides import this module, so it uses the standard library only. A dataset folder is
complete exactly when its manifest.json exists: the manifest is written last, after every
archive it names, so a reader never takes a half-written export for a whole one.

Layout of a dataset folder::

    {dataset}/manifest.json
    {dataset}/archives/task-1-job-1.zip     one CVAT export per selected job (or one imported zip)

Each archive is a CVAT export with images, "COCO 1.0" or "CVAT for images 1.1", unmodified.
`Archive.frame_names` lists the images of that archive that belong to the dataset (finished
work, deleted frames removed); a reader ignores every other image in the zip.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1
FORMATS = ("COCO 1.0", "CVAT for images 1.1")


@dataclass
class Label:
    """A CVAT label; `id` is CVAT's own id (not the contiguous training id)."""

    id: int
    name: str
    type: str = "any"


@dataclass
class Archive:
    """One export zip, relative to the dataset folder, and which of its frames count."""

    path: str
    format: str
    size: int
    sha256: str
    task_id: int | None = None
    job_id: int | None = None
    frames: list[int] = field(default_factory=list)
    frame_names: list[str] = field(default_factory=list)


@dataclass
class Manifest:
    """What went into a dataset: where it came from, which work, which labels, how much."""

    source: dict[str, Any]
    format: str
    archives: list[Archive]
    labels: list[Label]
    label_counts: dict[str, int]
    images: int
    fingerprint: str
    selection: dict[str, Any] = field(default_factory=dict)
    jobs_left_out: list[dict[str, Any]] = field(default_factory=list)
    created: str = ""
    schema: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        if data.get("schema") != SCHEMA_VERSION:
            raise ValueError(
                f"manifest schema {data.get('schema')!r} is not supported (expected {SCHEMA_VERSION}); "
                "re-export the dataset with this version of airflow-provider-cvat"
            )
        data["archives"] = [Archive(**a) for a in data["archives"]]
        data["labels"] = [Label(**label) for label in data["labels"]]
        return cls(**data)


def fingerprint(payload: Any) -> str:
    """A stable hash of JSON-serialisable content: equal annotations give equal fingerprints."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
