"""The quality gate of publishing: whether ``LATEST`` moves to a new model, and why.

Pure (no storage, no Airflow), so the rule is tested on its own and read in one place. The rule:
LATEST moves when the new AP50 >= LATEST's AP50 - ``margin``, or when there is no LATEST yet, and
never when the new AP50 is below the absolute ``floor`` or the model is broken (see
:mod:`airflow_cvat.operators.convert` for how the outcome is used).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class GateDecision:
    """Whether LATEST moves, and why (the email quotes ``reason``)."""

    moved: bool
    reason: str
    new_ap50: float | None
    old_ap50: float | None
    old_version: str | None
    margin: float
    floor: float = 0.0
    below_floor: bool = False


def decide(
    new_ap50: float | None,
    latest: dict[str, Any] | None,
    margin: float,
    broken: str | None = None,
    floor: float = 0.0,
) -> GateDecision:
    """The gate: see the module docstring. Pure, so the rule is tested without any storage."""
    old_ap50 = None if latest is None else latest.get("AP50")
    old_version = None if latest is None else latest.get("version")

    def result(moved: bool, reason: str, below_floor: bool = False) -> GateDecision:
        return GateDecision(moved, reason, new_ap50, old_ap50, old_version, margin, floor, below_floor)

    if broken:
        return result(False, f"the model is broken and was not published: {broken}")
    if new_ap50 is None:
        return result(False, "the run's metrics.json has no AP50; LATEST stays")
    if new_ap50 + 1e-9 < floor:
        stays = f"LATEST stays at {old_version}" if old_version else "there is no LATEST yet"
        return result(
            False,
            f"AP50 {new_ap50:.4f} is below the quality floor {floor}: published as a version to inspect, "
            f"but it does not become LATEST and does not pre-annotate ({stays}). Label more images, "
            "train longer or start from pretrained weights (the floor is the operator's quality_floor; "
            "in the ready DAG, CVAT_QUALITY_FLOOR)",
            below_floor=True,
        )
    if latest is None:
        return result(True, "first published model of this name")
    if old_ap50 is None:
        return result(True, f"LATEST ({old_version}) records no AP50")
    if new_ap50 + 1e-9 >= old_ap50 - margin:
        relation = "not worse than" if new_ap50 >= old_ap50 else "within the margin of"
        return result(True, f"AP50 {new_ap50:.4f} is {relation} LATEST's {old_ap50:.4f} (margin {margin})")
    return result(
        False,
        f"AP50 {new_ap50:.4f} is worse than LATEST's {old_ap50:.4f} ({old_version}) by more than "
        f"the margin {margin}; LATEST stays",
    )
