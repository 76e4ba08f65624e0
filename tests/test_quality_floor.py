"""The floor under LATEST: a model below an absolute AP50 never becomes LATEST nor pre-annotates.

The gate rule is pure (``decide``), so it is tested here without storage or TensorFlow; the whole
path (publish, LATEST, pre-annotation skipped, email) runs in tests/test_dag_retrain.py.
"""

from __future__ import annotations

import pytest

from airflow_cvat.operators.convert import ConvertModelOperator, decide
from airflow_cvat.operators.preannotate import model_from_outcome


@pytest.mark.parametrize(
    ("new", "latest", "moved", "below"),
    [
        (0.056, None, False, True),  # the first model of its name is not LATEST by default any more
        (0.29, {"version": "a", "AP50": 0.1}, False, True),  # better than LATEST, still below the floor
        (0.30, None, True, False),  # exactly at the floor
        (0.80, {"version": "a", "AP50": 0.7}, True, False),
    ],
)
def test_floor_rule(new, latest, moved, below):
    decision = decide(new, latest, 0.02, floor=0.3)
    assert decision.moved is moved and decision.below_floor is below
    if below:
        assert "below the quality floor 0.3" in decision.reason and f"{new:.4f}" in decision.reason


def test_floor_zero_keeps_the_old_rule():
    assert decide(0.01, None, 0.02, floor=0.0).moved


def test_floor_is_validated():
    with pytest.raises(ValueError, match="quality_floor"):
        ConvertModelOperator(
            task_id="p", run_uri="file:///r", root="file:///x", model_name="m", quality_floor=30
        )


def test_a_model_below_the_floor_never_pre_annotates_even_with_an_older_latest():
    gate = {"moved": False, "below_floor": True, "uri": "s3://b/models/m/LATEST", "current": "v1"}
    assert model_from_outcome({"published": True, "uri": "s3://b/models/m/v2", "latest": gate}) is None
    # A model that is merely worse than LATEST leaves pre-annotation to LATEST, as before.
    worse = {**gate, "below_floor": False}
    assert (
        model_from_outcome({"published": True, "uri": "s3://b/models/m/v2", "latest": worse}) == gate["uri"]
    )
    # No LATEST at all after the gate: nothing to pre-annotate with.
    none = {**worse, "current": None}
    assert model_from_outcome({"published": True, "uri": "s3://b/models/m/v2", "latest": none}) is None
