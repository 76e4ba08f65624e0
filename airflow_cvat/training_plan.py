"""What a training run runs with: the argument string, its parsed values, the GPU count, the machine.

Why one function: num_clones arrives in the argument string and in a form field, and the machine
type depends on it. :func:`plan_training` merges the two under one rule
(:func:`~airflow_cvat.arguments.merge_num_clones`), parses once and chooses the machine once. The
DAG's ``config`` task calls it and hands the result (:meth:`TrainingPlan.to_dict`) to the training
task, which runs it as given; a training operator used on its own calls the same function. The
trainer still validates its own input, since it also runs standalone. Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from airflow_cvat.arguments import ArgumentError, merge_num_clones, parse_arguments, split_arguments
from airflow_cvat.catalog import CatalogError, get_model, load_catalog
from airflow_cvat.machines import (
    MachineType,
    MachineTypeError,
    choose_machine,
    load_machine_types,
    machine_from_dict,
)


class PlanError(ValueError):
    """The training part of a run cannot start; ``problems`` lists each reason on its own."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class TrainingPlan:
    """The resolved training of one run; ``machine`` is None when the run trains locally."""

    arguments: str
    num_clones: int = 1
    training: dict[str, Any] = field(default_factory=dict)
    machine: MachineType | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (an XCom value), read back with :meth:`from_dict`."""
        machine = self.machine.to_dict() if self.machine else None
        return {"arguments": self.arguments, "num_clones": self.num_clones, "training": self.training,
                "machine": machine}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingPlan:
        machine = data.get("machine")
        return cls(
            arguments=str(data.get("arguments") or ""),
            num_clones=int(data.get("num_clones") or 1),
            training=dict(data.get("training") or {}),
            machine=machine_from_dict(machine) if machine else None,
        )


def plan_training(
    model: str,
    arguments: str | None,
    num_clones: Any = None,
    *,
    catalog_file: str | None = None,
    kubernetes: bool = False,
    machine_type: str | None = None,
    machine_types: str | dict | None = None,
) -> TrainingPlan:
    """Merge num_clones, parse the arguments for ``model``, choose the machine (Kubernetes only).

    Raises PlanError listing every problem (catalogue, model, arguments, machine type), so the
    caller reports them all at once. With arguments the parser refuses, the machine is still
    checked against the GPU count the run asked for.
    """
    try:
        catalog = load_catalog(catalog_file)
    except CatalogError as err:
        raise PlanError([f"catalogue file {catalog_file!r} is invalid: {err}; fix the file or "
                         "remove catalog_file from the cvat_retrain Variable"]) from None  # fmt: skip
    problems: list[str] = []
    try:
        get_model(model, catalog)
    except CatalogError as err:
        problems.append(f"model: {err}")
    text, clones, training = (arguments or "").strip(), _clones(num_clones), {}
    try:
        text = merge_num_clones(text, num_clones)
        if model in catalog:
            parsed = parse_arguments(model, text, catalog=catalog)
            training, clones = parsed.to_dict(), parsed.num_clones
        else:
            split_arguments(text)
    except ArgumentError as err:
        problems.append(f"bad training arguments: {err}")
    machine = None
    if kubernetes:
        try:
            machine = choose_machine(load_machine_types(machine_types), machine_type or None, clones)
        except MachineTypeError as err:
            problems.append(f"machine type: {err}")
    if problems:
        raise PlanError(problems)
    return TrainingPlan(arguments=text, num_clones=clones, training=training, machine=machine)


def _clones(value: Any) -> int:
    """The form's GPU count while the string is not parsed yet (1 when absent or unreadable)."""
    try:
        return max(1, int(value))
    except (TypeError, ValueError):
        return 1
