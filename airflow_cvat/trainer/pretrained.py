"""Base weights into the model: checked before training, restored, and proven restored.

Why not just the Model Garden's ``task.initialize``: it reads a checkpoint the way we want
(``tf.train.Checkpoint(backbone=..., decoder=...)`` over a trainer checkpoint, whose top level
holds ``model``, ``optimizer``, ``global_step`` and the model's ``checkpoint_items``), but it
reports nothing, stops at the first shape mismatch with a TensorFlow error, and cannot read
the Keras application h5 files the Inception-ResNet-v2 and NASNet backbones are published as.
So, for each module the run reads (``backbone``, ``decoder``):

1. **check** before any training step: the checkpoint's variable names and shapes (from its
   index, ``tf.train.list_variables``) against the variables the model's module has, under
   the object-graph paths a ``tf.train.Checkpoint(backbone=..., decoder=...)`` gives them.
   Anything missing, of another shape, or left over is a :class:`CheckpointMismatch` (the
   CLI's bad input, exit 2) naming the counts and the first of each.
2. **restore** with the same reader the Model Garden uses (``Checkpoint.read`` +
   ``assert_existing_objects_matched``);
3. **prove** it: every variable of the module is compared with the file's value. A module
   that did not get all of its values is a :class:`RestoreError`, never a warning.

Keras h5 files (``format`` keras_h5, backbone only) are matched the way Keras loads its own
application weights: the file's layers that have weights, in order, against the application's
layers that have weights, in order, checking each weight's shape. Not by layer name: most layers
of these applications have generated names (``conv2d_17``) that depend on what else the process
built, so the same network built twice does not have the same names.

The report (per module: variables and parameters restored, out of how many) is logged and
goes into the run's ``base_weights.json`` and its result.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras

log = logging.getLogger(__name__)

REPORT = "base_weights.json"
"""The run's record of what initialisation restored (kept for resumed runs and the result)."""
_VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
_SLOT_MARK = "/.OPTIMIZER_SLOT/"


class CheckpointMismatch(ValueError):
    """The base weights are not for this model's architecture (bad input: exit 2)."""


class RestoreError(RuntimeError):
    """The restore did not give a module the file's values (a bug or a broken file: exit 1)."""


@dataclass
class ModuleReport:
    """What one module got from the base weights."""

    variables: int
    variables_total: int
    parameters: int
    parameters_total: int

    @property
    def complete(self) -> bool:
        return self.variables == self.variables_total and self.variables_total > 0

    def line(self, module: str) -> str:
        return (
            f"{module}: {self.variables} of {self.variables_total} variables "
            f"({self.parameters:,} of {self.parameters_total:,} parameters)"
        )


def initialize(model: tf_keras.Model, task_config: Any) -> dict[str, Any]:
    """Load the task's ``init_checkpoint`` into ``model``; return what was restored, per module.

    ``task_config.init_checkpoint``: a checkpoint prefix, or an ``.h5`` file (Keras application
    weights); ``init_checkpoint_modules``: "backbone" or "backbone,decoder". Raises
    CheckpointMismatch before touching the model when the weights do not fit it.
    """
    path = task_config.init_checkpoint
    if not path:
        log.warning(
            "no base weights: training starts from random weights (fine for tests, poor for real use)"
        )
        return {"restored": {}, "path": None}
    modules = [m.strip() for m in task_config.init_checkpoint_modules.split(",") if m.strip()]
    if path.endswith(".h5"):
        reports = {"backbone": _load_h5(model.backbone, path, modules)}
    else:
        reports = _load_checkpoint(model, path, modules)
    for module, report in reports.items():
        log.info("base weights restored, %s, from %s", report.line(module), path)
    return {"path": path, "restored": {module: vars(report) for module, report in reports.items()}}


# ---------------------------------------------------------------------------------------------
# tf.train checkpoints (Model Garden form)
# ---------------------------------------------------------------------------------------------


def _load_checkpoint(model, path: str, modules: list[str]) -> dict[str, ModuleReport]:
    parts = {name: _module(model, name) for name in modules}
    stored = checkpoint_shapes(path)
    expected = {name: module_variables(name, part) for name, part in parts.items()}
    problems = [p for name in modules if (p := compare(name, expected[name], stored))]
    if problems:
        raise CheckpointMismatch(f"base checkpoint {path} does not fit this model: " + "; ".join(problems))
    status = tf.train.Checkpoint(**parts).read(path)
    status.expect_partial().assert_existing_objects_matched()
    reader = tf.train.load_checkpoint(path)
    reports = {}
    for name in modules:
        values = {key: reader.get_tensor(key) for key in expected[name]}
        reports[name] = _prove(name, expected[name], values)
    return reports


def _module(model, name: str):
    part = getattr(model, name, None)
    if part is None:
        raise CheckpointMismatch(f"this model has no {name} to load base weights into")
    return part


def checkpoint_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """Variable key -> shape, from a checkpoint's index (optimizer slots left out)."""
    return {
        key: tuple(shape)
        for key, shape in tf.train.list_variables(path)
        if key.endswith(_VALUE_SUFFIX) and _SLOT_MARK not in key
    }


def module_variables(name: str, module) -> dict[str, tf.Variable]:
    """Checkpoint key -> variable for ``tf.train.Checkpoint(name=module)``.

    The keys are the object-graph paths a checkpoint gives variables: the first path a
    breadth-first walk from the root finds, each edge name escaped ('.' -> '..', '/' -> '.S').
    A trainer checkpoint also holds the module under ``model/``, one level deeper, so its
    ``name/...`` keys are the same as these.
    """
    paths = {id(module): name}
    queue = collections.deque([module])
    found: dict[str, tf.Variable] = {}
    while queue:
        node = queue.popleft()
        for edge, child in tf.train.TrackableView.children(node).items():
            if id(child) in paths:
                continue
            paths[id(child)] = f"{paths[id(node)]}/{_escape(edge)}"
            if isinstance(child, tf.Variable):
                found[paths[id(child)] + _VALUE_SUFFIX] = child
            else:
                queue.append(child)
    return found


def _escape(edge: str) -> str:
    return edge.replace(".", "..").replace("/", ".S")


def compare(name: str, expected: dict[str, tf.Variable], stored: dict[str, tuple[int, ...]]) -> str:
    """What does not match between a module and the checkpoint ("" when all does)."""
    prefix = name + "/"
    in_file = {key: shape for key, shape in stored.items() if key.startswith(prefix)}
    if not in_file:
        tops = sorted({key.split("/", 1)[0] for key in stored})
        return f"the checkpoint holds no {name} (its top-level items: {', '.join(tops) or 'none'})"
    missing = [key for key in expected if key not in in_file]
    extra = [key for key in in_file if key not in expected]
    shapes = [
        (key, tuple(var.shape), in_file[key])
        for key, var in expected.items()
        if key in in_file and tuple(var.shape) != in_file[key]
    ]
    problems = []
    if missing:
        problems.append(
            f"{len(missing)} of {len(expected)} {name} variables missing, first: {_short(missing[0])}"
        )
    if shapes:
        key, want, got = shapes[0]
        problems.append(f"{len(shapes)} shape mismatches, first: {_short(key)} expected {want} got {got}")
    if extra:
        problems.append(
            f"{len(extra)} {name} variables in the checkpoint that the model does not have, "
            f"first: {_short(extra[0])}"
        )
    return "; ".join(problems)


def _short(key: str) -> str:
    return key.removesuffix(_VALUE_SUFFIX)


def _prove(name: str, variables: dict[str, tf.Variable], values: dict[str, np.ndarray]) -> ModuleReport:
    """Compare every variable with the file's value; anything short of all is a RestoreError."""
    restored = [key for key, var in variables.items() if np.array_equal(var.numpy(), values[key])]
    report = ModuleReport(
        variables=len(restored),
        variables_total=len(variables),
        parameters=sum(int(np.prod(variables[key].shape)) for key in restored),
        parameters_total=sum(int(np.prod(var.shape)) for var in variables.values()),
    )
    if not report.complete:
        different = next((k for k in variables if k not in restored), None)
        raise RestoreError(
            f"restoring the base weights left {name} incomplete: {report.line(name)} equal the file's"
            + (f"; first different: {_short(different)}" if different else "")
        )
    return report


# ---------------------------------------------------------------------------------------------
# Keras application h5 (weights without the top)
# ---------------------------------------------------------------------------------------------


def h5_layers(path: str) -> list[tuple[str, list[np.ndarray]]]:
    """(layer name, weights) of an h5 weights file, in its order, for layers that have weights.

    ``save_weights`` files keep the layers at the root; ``model.save`` files under
    ``model_weights``. Either way the root attribute ``layer_names`` gives the order.
    """
    import h5py

    with h5py.File(path, "r") as handle:
        group = handle["model_weights"] if "model_weights" in handle else handle
        if "layer_names" not in group.attrs:
            raise CheckpointMismatch(f"{path} is not a Keras weights file (no 'layer_names')")
        layers = []
        for raw in group.attrs["layer_names"]:
            layer_name = raw.decode() if isinstance(raw, bytes) else str(raw)
            weights = group[layer_name]
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in weights.attrs["weight_names"]]
            if names:
                layers.append((layer_name, [np.asarray(weights[n]) for n in names]))
        return layers


def _load_h5(backbone, path: str, modules: list[str]) -> ModuleReport:
    if modules != ["backbone"]:
        raise CheckpointMismatch(f"{path}: Keras application weights hold a backbone only, not {modules}")
    application = getattr(backbone, "application_layers", None)
    if not application:
        raise CheckpointMismatch(
            f"{path} is a Keras application's weights, but this model's backbone "
            f"({type(backbone).__name__}) is not a Keras application"
        )
    stored = h5_layers(path)
    layers = [layer for layer in application if layer.weights]
    problem = compare_h5(layers, stored)
    if problem:
        raise CheckpointMismatch(f"Keras weights {path} do not fit this backbone: {problem}")
    for layer, (_, weights) in zip(layers, stored, strict=True):
        layer.set_weights(weights)
    variables = {f"{layer.name}/{i}": w for layer in layers for i, w in enumerate(layer.weights)}
    values = {
        f"{layer.name}/{i}": v
        for layer, (_, ws) in zip(layers, stored, strict=True)
        for i, v in enumerate(ws)
    }
    report = _prove("backbone", variables, values)
    own = {id(v) for v in variables.values()}
    others = [v for v in backbone.variables if id(v) not in own]
    if others:  # a variable of the backbone outside the application: it would stay random
        raise CheckpointMismatch(
            f"{len(others)} backbone variables are not in {path}, first: {others[0].name}"
        )
    return report


def compare_h5(layers: list, stored: list[tuple[str, list[np.ndarray]]]) -> str:
    """What does not match between an application's weighted layers and an h5 file's ("" if all does)."""
    problems = []
    if len(layers) != len(stored):
        problems.append(f"the backbone has {len(layers)} layers with weights, the file {len(stored)}")
    mismatches = []
    for index, (layer, (name, weights)) in enumerate(
        zip(layers, stored, strict=False)
    ):  # counts compared above
        want = [tuple(w.shape) for w in layer.weights]
        got = [tuple(w.shape) for w in weights]
        if want != got:
            mismatches.append(f"layer {index} ({layer.name}; file: {name}) expected {want} got {got}")
    if mismatches:
        problems.append(f"{len(mismatches)} shape mismatches, first: {mismatches[0]}")
    return "; ".join(problems)
