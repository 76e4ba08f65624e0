"""Model classes to CVAT labels, by name.

Why by name, not by id: CVAT's label ids are per server and per task or project, while the
model's class ids are its own; the name is what a person gave both.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass
class LabelTarget:
    """A CVAT label a model class maps to, and the shape types it accepts."""

    id: int
    name: str
    type: str = "any"

    def accepts(self, shape_type: str) -> bool:
        return self.type in ("any", shape_type)


@dataclass
class LabelMapping:
    """Model class id -> CVAT label, matched by name; what could not be matched, and why."""

    by_class: dict[int, LabelTarget]
    missing: list[str]  # model label names the task lacks


def map_labels(classes: dict[int, str], cvat_labels: Iterable[dict[str, Any]]) -> LabelMapping:
    """Match by exact name. Why not by id: CVAT's label ids are per server and per task/project."""
    by_name = {}
    for label in cvat_labels:
        if label.get("parent_id"):  # skeleton points are not labels of their own
            continue
        by_name[label["name"]] = LabelTarget(int(label["id"]), label["name"], str(label.get("type") or "any"))
    mapped = {cid: by_name[name] for cid, name in classes.items() if name in by_name}
    missing = sorted({name for name in classes.values() if name not in by_name})
    return LabelMapping(mapped, missing)
