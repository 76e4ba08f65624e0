"""The catalogue of base models: name -> model family, backbone, defaults, where the weights live.

Both worlds import this module (the Airflow side to validate a DAG run's conf and to render the
form, the trainer to build the Model Garden experiment), so it uses the standard library only
and imports in milliseconds. It is declarative on purpose, like the Model Garden's registered
experiment configs: adding a model is adding an entry, not code.

The seven seed models keep the names and defaults users knew from Onepanel's CVAT training (the
TF1 Object Detection API); each maps onto a maintained TF Model Garden architecture:

=========================  ==============  =====================  ==============================
name                       family          backbone               note
=========================  ==============  =====================  ==============================
ssd-mobilenet-v2-coco      retinanet       mobilenet_v2           one-stage; the SSD-MobileNet role
frcnn-res50-coco           faster_rcnn     resnet50               ResNet-FPN
frcnn-res50-lowp           faster_rcnn     resnet50               few proposals (faster, lower recall)
frcnn-res101-coco          faster_rcnn     resnet101              ResNet-FPN
frcnn-inc-resv2-atr-coco   faster_rcnn     inception_resnet_v2    Keras model as a registered backbone
frcnn-nas-coco             faster_rcnn     nasnet_large           Keras model; needs >= 2 GPUs
mask-rcnn                  mask_rcnn       resnet50               three-stage schedule
=========================  ==============  =====================  ==============================

Users add their own entries in a JSON or YAML file (``load_catalog(extra_file)``)::

    {"models": [{"name": "my-retina", "family": "retinanet", "backbone": "resnet50",
                 "checkpoint": "s3://bucket/base_models/my-retina/ckpt-1",
                 "batch_size": 8, "initial_learning_rate": 0.01, "epochs": 5000}]}

``checkpoint`` is the base checkpoint to fine-tune from: a ``tf.train.Checkpoint`` holding
``backbone`` and ``decoder`` (the form the Model Garden's ``init_checkpoint`` reads, and what
``python -m airflow_cvat.trainer init-base`` writes). When it is None the Airflow side uses
``{root}/base_models/{name}/``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

FAMILIES: dict[str, tuple[str, ...]] = {
    "retinanet": ("mobilenet_v2", "resnet50", "resnet101"),
    "faster_rcnn": ("resnet50", "resnet101", "inception_resnet_v2", "nasnet_large"),
    "mask_rcnn": ("resnet50", "resnet101"),
}
"""Model families and the backbones each supports (the trainer's families.py implements these)."""


class CatalogError(ValueError):
    """A catalogue entry or file is invalid; the message says which and what is valid."""


@dataclass(frozen=True)
class ModelSpec:
    """One base model: what to build and the defaults its arguments start from.

    ``epochs`` keeps the seed's meaning: training *steps*. ``steps_per_image`` is the seed's
    rule for when the user gives no epochs: steps = images / batch_size * steps_per_image.
    ``stage_epochs`` (Mask R-CNN only) are full passes over the training split for the three
    stages: heads only, then ResNet stage 4 and up, then all layers at a tenth of the rate.
    """

    name: str
    family: str
    backbone: str
    batch_size: int
    initial_learning_rate: float
    epochs: int
    steps_per_image: int = 1000
    input_size: int = 640
    min_clones: int = 1
    num_proposals: int | None = None
    stage_epochs: tuple[int, int, int] | None = None
    checkpoint: str | None = None
    description: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.stage_epochs is not None:
            data["stage_epochs"] = list(self.stage_epochs)
        return data


def _faster_rcnn(name: str, backbone: str, description: str, **extra: Any) -> ModelSpec:
    """The seed's two-stage models share one schedule (batch 1, lr 0.0003, 10,000 steps)."""
    return ModelSpec(
        name=name,
        family="faster_rcnn",
        backbone=backbone,
        batch_size=1,
        initial_learning_rate=0.0003,
        epochs=10000,
        steps_per_image=500,
        description=description,
        **extra,
    )


SEED_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="ssd-mobilenet-v2-coco",
        family="retinanet",
        backbone="mobilenet_v2",
        batch_size=24,
        initial_learning_rate=0.004,
        epochs=15000,
        steps_per_image=1000,
        input_size=320,
        description="One-stage detector with a MobileNetV2 backbone: fast, the recommended default.",
    ),
    _faster_rcnn("frcnn-res50-coco", "resnet50", "Faster R-CNN, ResNet-50 FPN: more accurate, slower."),
    _faster_rcnn(
        "frcnn-res50-lowp",
        "resnet50",
        "Faster R-CNN, ResNet-50 FPN with few proposals: faster inference, lower recall.",
        num_proposals=100,
    ),
    _faster_rcnn("frcnn-res101-coco", "resnet101", "Faster R-CNN, ResNet-101 FPN."),
    _faster_rcnn(
        "frcnn-inc-resv2-atr-coco",
        "inception_resnet_v2",
        "Faster R-CNN, Inception-ResNet-v2 (atrous): for dense, complicated images.",
    ),
    _faster_rcnn(
        "frcnn-nas-coco",
        "nasnet_large",
        "Faster R-CNN, NASNet-Large: the most accurate and by far the slowest; needs 2+ GPUs.",
        min_clones=2,
    ),
    ModelSpec(
        name="mask-rcnn",
        family="mask_rcnn",
        backbone="resnet50",
        batch_size=1,
        initial_learning_rate=0.0003,
        epochs=10000,
        steps_per_image=500,
        stage_epochs=(1, 2, 3),
        description="Mask R-CNN, ResNet-50 FPN: boxes and segmentation masks.",
    ),
)


def load_catalog(extra_file: str | os.PathLike[str] | None = None) -> dict[str, ModelSpec]:
    """The seed models plus the entries of ``extra_file`` (JSON, or YAML when PyYAML is present).

    An extra entry with a seed's name replaces that seed, so a deployment can point a seed model
    at its own checkpoint. Errors raise :class:`CatalogError` naming the entry and the problem.
    """
    catalog = {spec.name: spec for spec in SEED_MODELS}
    if extra_file is not None:
        for entry in _read_entries(os.fspath(extra_file)):
            spec = spec_from_dict(entry)
            catalog[spec.name] = spec
    return catalog


def get_model(name: str, catalog: dict[str, ModelSpec] | None = None) -> ModelSpec:
    """The catalogue entry for ``name``, or a CatalogError listing the valid names."""
    catalog = catalog if catalog is not None else load_catalog()
    try:
        return catalog[name]
    except KeyError:
        raise CatalogError(
            f"unknown model {name!r}; valid models are: {', '.join(sorted(catalog))} "
            "(or add your own with a catalogue file)"
        ) from None


def spec_from_dict(entry: dict[str, Any]) -> ModelSpec:
    """Validate one user entry and build its ModelSpec (missing defaults come from the family)."""
    if not isinstance(entry, dict):
        raise CatalogError(f"a catalogue entry must be a mapping, got {type(entry).__name__}")
    known = {f.name for f in fields(ModelSpec)}
    unknown = sorted(set(entry) - known)
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise CatalogError(f"catalogue entry {entry!r} has no 'name'")
    if unknown:
        raise CatalogError(f"catalogue entry {name!r}: unknown keys {unknown}; valid keys: {sorted(known)}")
    family, backbone = entry.get("family"), entry.get("backbone")
    if family not in FAMILIES:
        raise CatalogError(f"catalogue entry {name!r}: family {family!r} is not one of {sorted(FAMILIES)}")
    if backbone not in FAMILIES[family]:
        raise CatalogError(
            f"catalogue entry {name!r}: backbone {backbone!r} is not supported by family {family!r}; "
            f"valid backbones: {list(FAMILIES[family])}"
        )
    data = {**_family_defaults(family), **entry}
    if data.get("stage_epochs") is not None:
        data["stage_epochs"] = tuple(int(v) for v in data["stage_epochs"])
        if len(data["stage_epochs"]) != 3:
            raise CatalogError(f"catalogue entry {name!r}: stage_epochs needs three numbers")
    _check_positive(name, data, ("batch_size", "epochs", "steps_per_image", "input_size", "min_clones"), int)
    _check_positive(name, data, ("initial_learning_rate",), float)
    return ModelSpec(**data)


def _family_defaults(family: str) -> dict[str, Any]:
    """Defaults of a user entry: those of the first seed model of the same family."""
    seed = next(spec for spec in SEED_MODELS if spec.family == family)
    return {
        "batch_size": seed.batch_size,
        "initial_learning_rate": seed.initial_learning_rate,
        "epochs": seed.epochs,
        "steps_per_image": seed.steps_per_image,
        "input_size": seed.input_size,
        "stage_epochs": seed.stage_epochs,
        "min_clones": 1,
    }


def _check_positive(name: str, data: dict[str, Any], keys: tuple[str, ...], kind: type) -> None:
    for key in keys:
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise CatalogError(f"catalogue entry {name!r}: {key} must be a positive number, got {value!r}")
        if kind is int and int(value) != value:
            raise CatalogError(f"catalogue entry {name!r}: {key} must be a whole number, got {value!r}")
        data[key] = kind(value)


def _read_entries(path: str) -> list[dict[str, Any]]:
    """Entries of a catalogue file: ``{"models": [...]}``, a list, or a mapping name -> entry."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as error:
        raise CatalogError(f"cannot read catalogue file {path}: {error}") from None
    data = _parse(path, text)
    if isinstance(data, dict) and "models" in data:
        data = data["models"]
    if isinstance(data, dict):
        data = [{"name": key, **value} for key, value in data.items()]
    if not isinstance(data, list):
        raise CatalogError(f"catalogue file {path}: expected a list of models or {{'models': [...]}}")
    return data


def _parse(path: str, text: str) -> Any:
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml  # PyYAML: imported only for YAML catalogues; Airflow installs it anyway
        except ImportError:  # pragma: no cover - depends on the environment
            raise CatalogError("YAML catalogue files need PyYAML; use JSON or install pyyaml") from None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise CatalogError(f"catalogue file {path} is not valid YAML: {error}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise CatalogError(f"catalogue file {path} is not valid JSON: {error}") from None
