"""Named machine types for training pods: node selector, tolerations, GPUs, CPU, memory, /dev/shm.

Why names: the people who start a training run (from the DAG's form) should pick "gpu-2", not
write Kubernetes scheduling rules; the people who run the cluster define what "gpu-2" means.
The built-in types below suit a typical NVIDIA GPU node pool (nodes labelled by the NVIDIA GPU
operator, GPU nodes tainted ``nvidia.com/gpu:NoSchedule``). A deployment changes or adds types
without code through the Airflow Variable ``cvat_machine_types``, a JSON object merged over the
built-ins (a field given for a built-in name overrides that field only)::

    {"gpu-2": {"node_selector": {"cloud.google.com/gke-accelerator": "nvidia-l4"}},
     "a100-8": {"gpus": 8, "cpu": "64", "memory": "512Gi", "shm_size": "64Gi",
                "node_selector": {"pool": "a100"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}}

The Variable is read when a task runs, never when a DAG file is parsed (a Variable read at parse
time is a metadata-database query on every parse of every DAG file).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

MACHINE_TYPES_VARIABLE = "cvat_machine_types"
GPU_RESOURCE = "nvidia.com/gpu"

_GPU_NODE = {"nvidia.com/gpu.present": "true"}
_GPU_TAINT = ({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"},)


class MachineTypeError(ValueError):
    """An unknown machine type, a bad definition, or more GPUs asked than the machine has."""


@dataclass(frozen=True)
class MachineType:
    """What a training pod asks the scheduler for.

    ``cpu``/``memory`` are Kubernetes quantities used as requests (memory also as the limit: an
    out-of-memory pod should fail, not take the node down). ``shm_size`` bounds the in-memory
    /dev/shm (tf.data and NCCL use shared memory; Docker's default 64 MiB is far too small).
    """

    name: str
    gpus: int
    cpu: str
    memory: str
    shm_size: str = "2Gi"
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()

    def max_clones(self) -> int:
        """Replicas the machine can run: one per GPU; a CPU machine runs one (CPU) replica."""
        return max(1, self.gpus)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["tolerations"] = list(self.tolerations)
        return data


def _gpu(gpus: int, cpu: str, memory: str, shm: str) -> MachineType:
    return MachineType(f"gpu-{gpus}", gpus, cpu, memory, shm, dict(_GPU_NODE), _GPU_TAINT)


BUILTIN_MACHINE_TYPES: dict[str, MachineType] = {
    m.name: m
    for m in (
        MachineType("cpu", gpus=0, cpu="4", memory="16Gi", shm_size="2Gi"),
        _gpu(1, "8", "32Gi", "8Gi"),
        _gpu(2, "16", "64Gi", "16Gi"),
        _gpu(4, "32", "128Gi", "32Gi"),
        _gpu(8, "64", "256Gi", "64Gi"),
    )
}


def load_machine_types(overrides: str | dict[str, Any] | None = None) -> dict[str, MachineType]:
    """Built-in types with ``overrides`` (the Variable's JSON text or an already parsed mapping)."""
    types = dict(BUILTIN_MACHINE_TYPES)
    if overrides is None or overrides == "":
        return types
    data = _parse(overrides)
    for name, entry in data.items():
        if not isinstance(entry, dict):
            raise MachineTypeError(f"machine type {name!r} must be a JSON object, got {entry!r}")
        base = types[name].to_dict() if name in types else {}
        types[name] = machine_from_dict({**base, **entry, "name": name})
    return types


def machine_from_dict(data: dict[str, Any]) -> MachineType:
    """Validate one definition; errors name the machine type and the field."""
    name = data.get("name")
    known = {f.name for f in fields(MachineType)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise MachineTypeError(f"machine type {name!r}: unknown fields {unknown}; valid: {sorted(known)}")
    missing = sorted(k for k in ("gpus", "cpu", "memory") if k not in data)
    if missing:
        raise MachineTypeError(f"machine type {name!r}: missing {missing}")
    gpus = data["gpus"]
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0:
        raise MachineTypeError(f"machine type {name!r}: gpus must be a whole number >= 0, got {gpus!r}")
    selector = data.get("node_selector") or {}
    tolerations = data.get("tolerations") or []
    if not isinstance(selector, dict) or not isinstance(tolerations, list | tuple):
        raise MachineTypeError(f"machine type {name!r}: node_selector is an object, tolerations a list")
    if not all(isinstance(t, dict) for t in tolerations):
        raise MachineTypeError(f"machine type {name!r}: each toleration is an object (key, operator, effect)")
    return MachineType(
        name=str(name),
        gpus=gpus,
        cpu=str(data["cpu"]),
        memory=str(data["memory"]),
        shm_size=str(data.get("shm_size") or "2Gi"),
        node_selector={str(k): str(v) for k, v in selector.items()},
        tolerations=tuple(dict(t) for t in tolerations),
    )


def choose_machine(types: dict[str, MachineType], name: str | None, num_clones: int) -> MachineType:
    """The named type, or the smallest GPU type that fits ``num_clones``; refuse what cannot fit.

    Why refuse: a pod asking for more GPUs than its node pool has never schedules; it waits in
    Pending until a timeout, which is a slow way to say "num_clones is too high".
    """
    if name:
        if name not in types:
            raise MachineTypeError(f"unknown machine type {name!r}; known types: {', '.join(sorted(types))}")
        machine = types[name]
        if num_clones > machine.max_clones():
            raise MachineTypeError(
                f"num_clones={num_clones} needs {num_clones} GPUs but machine type {name!r} has "
                f"{machine.gpus}; lower num_clones or choose a machine type with more GPUs: "
                + ", ".join(f"{m.name} ({m.gpus})" for m in _by_gpus(types) if m.gpus >= num_clones)
            )
        return machine
    fitting = [m for m in _by_gpus(types) if m.gpus >= num_clones]
    if not fitting:
        raise MachineTypeError(f"no machine type has {num_clones} GPUs; known: {', '.join(sorted(types))}")
    return fitting[0]


def _by_gpus(types: dict[str, MachineType]) -> list[MachineType]:
    return sorted((m for m in types.values() if m.gpus > 0), key=lambda m: (m.gpus, m.name))


def _parse(overrides: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(overrides, dict):
        return overrides
    try:
        data = json.loads(overrides)
    except json.JSONDecodeError as error:
        raise MachineTypeError(f"Variable {MACHINE_TYPES_VARIABLE} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise MachineTypeError(f"Variable {MACHINE_TYPES_VARIABLE} must be a JSON object of machine types")
    return data
