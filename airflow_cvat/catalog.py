"""The catalogue of base models: name -> model family, backbone, defaults, where the weights live.

Both worlds import this module (the Airflow side to validate a DAG run's conf and to render the
form, the trainer to build the Model Garden experiment), so it uses the standard library only
and imports in milliseconds. It is declarative on purpose, like the Model Garden's registered
experiment configs: adding a model is adding an entry, not code.

The seven seed models keep the names and defaults users knew from Onepanel's CVAT training (the
TF1 Object Detection API); each maps onto a maintained TF Model Garden architecture, and each
names the published weights it fine-tunes from (``pretrained``; modules read from them):

=========================  ===========  ===================  ===================================
name                       family       backbone             pretrained (modules)
=========================  ===========  ===================  ===================================
ssd-mobilenet-v2-coco      retinanet    mobilenet_v2         ImageNet MobileNetV2 (backbone)
frcnn-res50-coco           faster_rcnn  resnet50             ImageNet ResNet-50 (backbone)
frcnn-res50-lowp           faster_rcnn  resnet50             ImageNet ResNet-50 (backbone)
frcnn-res101-coco          faster_rcnn  resnet101            ImageNet ResNet-101 (backbone)
frcnn-inc-resv2-atr-coco   faster_rcnn  inception_resnet_v2  Keras ImageNet h5 (backbone)
frcnn-nas-coco             faster_rcnn  nasnet_large         Keras ImageNet h5 (backbone); 2+ GPUs
mask-rcnn                  mask_rcnn    resnet50             ImageNet ResNet-50 (backbone)
retinanet-resnet50fpn-coco retinanet    resnet50             COCO RetinaNet (backbone, decoder)
retinanet-mobilenetv2-coco retinanet    mobilenet_v2         COCO RetinaNet (backbone, decoder)
=========================  ===========  ===================  ===================================

The last two (``COCO_MODELS``) are COCO-pretrained detectors built exactly as published
(``options["model"]``), so their decoder loads too; no Faster or Mask R-CNN COCO checkpoint is
published in Model Garden form, so those start from ImageNet backbones as the Model Garden's
own configs do. Sources and where each was confirmed: docs/pretrained.md.

Users add their own entries in a JSON or YAML file (``load_catalog(extra_file)``)::

    {"models": [{"name": "my-retina", "family": "retinanet", "backbone": "resnet50",
                 "pretrained": {"uri": "s3://bucket/weights/r50.tar.gz", "format": "checkpoint_tar",
                                "modules": ["backbone"], "sha256": "..."},
                 "batch_size": 8, "initial_learning_rate": 0.01, "epochs": 5000}]}

``checkpoint`` (a URI) is a deployment's own base checkpoint and wins over ``pretrained``: a
``tf.train.Checkpoint`` holding ``backbone`` and ``decoder`` (what ``python -m
airflow_cvat.trainer init-base`` writes, with random weights). The pull operator copies either
into ``{root}/base_models/{name}/`` and marks it with ``pulled.json``.
"""

from __future__ import annotations

import json
import os
import re
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


PRETRAINED_FORMATS: dict[str, str] = {
    "checkpoint": "a tf.train checkpoint prefix in Model Garden form (PREFIX.index + PREFIX.data-*)",
    "checkpoint_tar": "a .tar.gz (or .tar/.tgz) holding one such checkpoint",
    "keras_h5": "Keras application weights without the top, an .h5 file",
}
"""How published weights are packaged; the pull operator unpacks, the trainer reads the result."""

PRETRAINED_MODULES = ("backbone", "decoder")
"""What fine-tuning may read from pretrained weights; never the heads (the class count differs)."""

PRETRAINED_SCHEMES = ("https", "http", "gs", "s3", "file")

PULLED_MARKER = "pulled.json"
"""Written last into ``{root}/base_models/{name}/`` by the pull: the folder is complete.

Its keys: ``name``; ``source`` (the URI actually read, after mirroring); ``published`` (the
catalogue's URI); ``format`` and ``modules`` (as in :class:`Pretrained`); ``checkpoint`` (the
checkpoint prefix, or the .h5 file, relative to the folder); ``sha256`` / ``md5`` (of the one
published file, as verified; None for a multi-file checkpoint prefix); ``bytes`` (read from the
source); ``files`` ({name: {size, sha256}}); ``weights`` ("pretrained", or "random (init-base)"
for a folder filled by ``init-base``); ``input_size``, ``config``, ``dataset`` when known.
The trainer's ``--base-checkpoint`` takes the folder and reads this file.
"""
_HEX = re.compile(r"^[0-9a-f]+$")


@dataclass(frozen=True)
class Pretrained:
    """Published weights a catalogue model fine-tunes from, and the facts needed to trust them.

    Why a record of its own: the pull (Airflow side) needs where and how the weights are
    packaged and how to verify them; the trainer needs which modules to load and what the
    weights were trained with (config, input size) to check they fit the model it builds.

    ``uri`` is the *published* location (``gs://`` is read through
    ``https://storage.googleapis.com/``; an offline cluster maps it to its own bucket with the
    mirror setting, see :mod:`airflow_cvat.mirrors`). ``checkpoint`` is the prefix inside a
    tarball when it is known; without it the pull takes the tarball's newest ``*.index``.
    ``sha256`` / ``md5`` cover the one published file (tarball or h5); Keras publishes md5.
    """

    uri: str
    format: str
    modules: tuple[str, ...]
    sha256: str | None = None
    md5: str | None = None
    input_size: int | None = None
    config: str = ""
    checkpoint: str | None = None
    dataset: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "modules", tuple(self.modules))
        for problem in self._problems():
            raise CatalogError(f"pretrained weights {self.uri!r}: {problem}")

    def _problems(self) -> list[str]:
        problems = []
        scheme = self.uri.partition("://")[0] if "://" in self.uri else ""
        if scheme not in PRETRAINED_SCHEMES:
            problems.append(f"uri must start with one of {[s + '://' for s in PRETRAINED_SCHEMES]}")
        if self.format not in PRETRAINED_FORMATS:
            problems.append(f"format {self.format!r} is not one of {sorted(PRETRAINED_FORMATS)}")
        path = self.uri.split("?", 1)[0].lower()
        if self.format == "checkpoint_tar" and not path.endswith((".tar.gz", ".tgz", ".tar")):
            problems.append("format checkpoint_tar needs a .tar.gz, .tgz or .tar uri")
        if self.format == "keras_h5" and not path.endswith(".h5"):
            problems.append("format keras_h5 needs an .h5 uri")
        if self.format == "checkpoint" and (self.sha256 or self.md5):
            problems.append("a checkpoint prefix is several files: pin hashes on a checkpoint_tar instead")
        if not self.modules or any(m not in PRETRAINED_MODULES for m in self.modules):
            problems.append(
                f"modules {list(self.modules)} must be a non-empty subset of {list(PRETRAINED_MODULES)}"
            )
        if len(set(self.modules)) != len(self.modules):
            problems.append(f"modules {list(self.modules)} repeat a name")
        if self.format == "keras_h5" and self.modules != ("backbone",):
            problems.append("Keras application weights hold a backbone only: modules must be ['backbone']")
        for name, length in (("sha256", 64), ("md5", 32)):
            value = getattr(self, name)
            if value is not None and (len(value) != length or not _HEX.match(value)):
                problems.append(f"{name} must be {length} lower-case hex digits, got {value!r}")
        if self.checkpoint is not None and (self.format != "checkpoint_tar" or "/" in self.checkpoint):
            problems.append("checkpoint names the prefix inside a checkpoint_tar (a file name, no '/')")
        if self.input_size is not None and (
            isinstance(self.input_size, bool) or not isinstance(self.input_size, int) or self.input_size <= 0
        ):
            problems.append(f"input_size must be a positive whole number, got {self.input_size!r}")
        return problems

    @property
    def modules_text(self) -> str:
        """The Model Garden's ``init_checkpoint_modules`` form: ``"backbone,decoder"``."""
        return ",".join(self.modules)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["modules"] = list(self.modules)
        return data

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Pretrained:
        """Build from a catalogue file's mapping; errors name ``where`` (the entry)."""
        if not isinstance(data, dict):
            raise CatalogError(f"{where}: pretrained must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CatalogError(f"{where}: unknown pretrained keys {unknown}; valid keys: {sorted(known)}")
        missing = [key for key in ("uri", "format", "modules") if not data.get(key)]
        if missing:
            raise CatalogError(f"{where}: pretrained needs {missing} (e.g. 'modules': ['backbone'])")
        modules = data["modules"]
        if isinstance(modules, str):
            modules = [m.strip() for m in modules.split(",")]
        values = {**data, "modules": tuple(modules)}
        for key in ("sha256", "md5"):
            if isinstance(values.get(key), str):
                values[key] = values[key].lower()
        try:
            return cls(**values)
        except CatalogError as error:
            raise CatalogError(f"{where}: {error}") from None
        except TypeError as error:
            raise CatalogError(f"{where}: pretrained is invalid: {error}") from None


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
    pretrained: Pretrained | None = None

    @property
    def size_step(self) -> int:
        """``input_size`` must be a multiple of this: the stride of the coarsest feature level.

        Why: this project's models use levels 3..6 (multiples of 64); an entry built as a published
        COCO detector uses its levels 3..7, and level 7's anchors line up only on multiples of 128.
        """
        return 2 ** int(self.options.get(MODEL_OPTION, {}).get("max_level", 6))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.stage_epochs is not None:
            data["stage_epochs"] = list(self.stage_epochs)
        if self.pretrained is not None:
            data["pretrained"] = self.pretrained.to_dict()
        return data


GCS = "https://storage.googleapis.com"
"""Public objects of ``gs://bucket/key`` are served at ``{GCS}/bucket/key``."""

# Published weights (each confirmed in tensorflow/models, keras-team/tf-keras or google/mediapipe;
# see docs/pretrained.md). ImageNet backbones load ``backbone`` only, as the Model Garden's own
# detection configs do; a COCO detector also loads ``decoder`` when the architecture matches.
RESNET50_IMAGENET = Pretrained(
    uri="gs://cloud-tpu-checkpoints/vision-2.0/resnet50_imagenet/ckpt-28080",
    format="checkpoint",
    modules=("backbone",),
    input_size=224,
    config="resnet_imagenet",
    dataset="ImageNet",
)
"""The ``init_checkpoint`` default of the Model Garden's RetinaNet, Faster and Mask R-CNN configs."""

RESNET101_IMAGENET = Pretrained(
    uri=f"{GCS}/tf_model_garden/vision/resnet/resnet-101-i224.tar.gz",
    format="checkpoint_tar",
    modules=("backbone",),
    input_size=224,
    config="resnet_imagenet",  # with imagenet_resnet101_tpu.yaml (MODEL_GARDEN.md, 200 epochs)
    dataset="ImageNet",
)

MOBILENETV2_IMAGENET = Pretrained(
    uri="gs://tf_model_garden/vision/mobilenet/v2_1.0_float/ckpt-180648",
    format="checkpoint",
    modules=("backbone",),
    input_size=224,
    config="mobilenet_imagenet",
    dataset="ImageNet",
)

KERAS_APPLICATIONS = f"{GCS}/tensorflow/keras-applications"

INCEPTION_RESNET_V2_IMAGENET = Pretrained(
    uri=f"{KERAS_APPLICATIONS}/inception_resnet_v2/inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
    format="keras_h5",
    modules=("backbone",),
    md5="d19885ff4a710c122648d3b5c3b684e4",  # tf_keras/applications/inception_resnet_v2.py
    input_size=299,
    config="tf_keras.applications.InceptionResNetV2(include_top=False)",
    dataset="ImageNet",
)

NASNET_LARGE_IMAGENET = Pretrained(
    uri=f"{KERAS_APPLICATIONS}/nasnet/NASNet-large-no-top.h5",
    format="keras_h5",
    modules=("backbone",),
    md5="d81d89dc07e6e56530c4e77faddd61b5",  # tf_keras/applications/nasnet.py
    input_size=331,
    config="tf_keras.applications.NASNetLarge(include_top=False)",
    dataset="ImageNet",
)

RETINANET_RESNET50FPN_COCO = Pretrained(
    uri=f"{GCS}/tf_model_garden/vision/retinanet/retinanet-resnet50fpn.tar.gz",
    format="checkpoint_tar",
    modules=("backbone", "decoder"),
    input_size=640,
    config="retinanet_resnetfpn_coco",  # 72 epochs, COCO box AP 36.8 (MODEL_GARDEN.md)
    checkpoint="ckpt-33264",
    dataset="COCO",
)

RETINANET_MOBILENETV2_COCO = Pretrained(
    uri="gs://tf_model_garden/vision/qat/mobilenetv2_ssd_coco/mobilenetv2_ssd_i256_ckpt.tar.gz",
    format="checkpoint_tar",
    modules=("backbone", "decoder"),
    input_size=256,
    config="retinanet_mobile_coco",  # with coco_mobilenetv2_tpu.yaml; FP32, COCO mAP 23.3 (QAT README)
    checkpoint="ckpt-277200",  # the name MediaPipe Model Maker loads from this tarball
    dataset="COCO",
)

MODEL_OPTION = "model"
"""``options["model"]``: overrides of the Model Garden ``task.model`` config, applied last.

Why: a COCO checkpoint's decoder loads only into the architecture it was trained with, so an
entry that loads ``decoder`` states that architecture here (a ``params_override`` of the
experiment's model) rather than inheriting this project's lighter defaults.
"""

MOBILENETV2_COCO_ARCHITECTURE: dict[str, Any] = {
    # official/vision/configs/experiments/retinanet/coco_mobilenetv2_tpu.yaml, task.model
    "min_level": 3,
    "max_level": 7,
    "anchor": {"anchor_size": 3, "aspect_ratios": [0.5, 1.0, 2.0], "num_scales": 3},
    "decoder": {
        "type": "fpn",
        "fpn": {"num_filters": 128, "use_separable_conv": True, "use_keras_layer": True},
    },
    "head": {"num_convs": 4, "num_filters": 128, "use_separable_conv": True},
    "norm_activation": {"activation": "relu6", "norm_epsilon": 0.001, "norm_momentum": 0.99},
}

RESNETFPN_COCO_ARCHITECTURE: dict[str, Any] = {
    # retinanet_resnetfpn_coco as registered: levels 3..7, FPN and head of 256 filters, 4 convs
    "min_level": 3,
    "max_level": 7,
}


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
        pretrained=MOBILENETV2_IMAGENET,
        description=(
            "One-stage detector with a MobileNetV2 backbone: fast, the seed's default. Starts from the "
            "ImageNet MobileNetV2 backbone only: its levels 3-6 and light head differ from the published "
            "COCO RetinaNet-MobileNetV2, whose decoder would not load here (retinanet-mobilenetv2-coco "
            "is that model)."
        ),
    ),
    _faster_rcnn(
        "frcnn-res50-coco",
        "resnet50",
        "Faster R-CNN, ResNet-50 FPN: more accurate, slower. ImageNet ResNet-50 backbone (no Faster "
        "R-CNN COCO checkpoint is published in Model Garden form).",
        pretrained=RESNET50_IMAGENET,
    ),
    _faster_rcnn(
        "frcnn-res50-lowp",
        "resnet50",
        "Faster R-CNN, ResNet-50 FPN with few proposals: faster inference, lower recall. ImageNet "
        "ResNet-50 backbone.",
        num_proposals=100,
        pretrained=RESNET50_IMAGENET,
    ),
    _faster_rcnn(
        "frcnn-res101-coco",
        "resnet101",
        "Faster R-CNN, ResNet-101 FPN. ImageNet ResNet-101 backbone.",
        pretrained=RESNET101_IMAGENET,
    ),
    _faster_rcnn(
        "frcnn-inc-resv2-atr-coco",
        "inception_resnet_v2",
        "Faster R-CNN, Inception-ResNet-v2 (atrous): for dense, complicated images. ImageNet weights "
        "of the Keras application (h5), backbone only.",
        pretrained=INCEPTION_RESNET_V2_IMAGENET,
    ),
    _faster_rcnn(
        "frcnn-nas-coco",
        "nasnet_large",
        "Faster R-CNN, NASNet-Large: the most accurate and by far the slowest; needs 2+ GPUs. ImageNet "
        "weights of the Keras application (h5), backbone only.",
        min_clones=2,
        pretrained=NASNET_LARGE_IMAGENET,
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
        pretrained=RESNET50_IMAGENET,
        description=(
            "Mask R-CNN, ResNet-50 FPN: boxes and segmentation masks. ImageNet ResNet-50 backbone (no Mask "
            "R-CNN COCO checkpoint is published in Model Garden form), as the Model Garden's own config."
        ),
    ),
)
"""The seven models of the original CVAT training, by their familiar names."""

COCO_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="retinanet-resnet50fpn-coco",
        family="retinanet",
        backbone="resnet50",
        batch_size=8,
        initial_learning_rate=0.01,
        epochs=5000,
        steps_per_image=200,
        input_size=640,
        pretrained=RETINANET_RESNET50FPN_COCO,
        options={MODEL_OPTION: RESNETFPN_COCO_ARCHITECTURE},
        description=(
            "RetinaNet, ResNet-50 FPN, COCO-pretrained backbone and decoder (the Model Garden's "
            "retinanet_resnetfpn_coco: 640 px, levels 3-7). The best start for a few hundred images; "
            "wants a GPU. input_size must be a multiple of 128."
        ),
    ),
    ModelSpec(
        name="retinanet-mobilenetv2-coco",
        family="retinanet",
        backbone="mobilenet_v2",
        batch_size=24,
        initial_learning_rate=0.004,
        epochs=5000,
        steps_per_image=200,
        input_size=256,
        pretrained=RETINANET_MOBILENETV2_COCO,
        options={MODEL_OPTION: MOBILENETV2_COCO_ARCHITECTURE},
        description=(
            "RetinaNet, MobileNetV2 FPN, COCO-pretrained backbone and decoder (retinanet_mobile_coco with "
            "coco_mobilenetv2_tpu.yaml: 256 px, levels 3-7, separable 128-filter FPN and head): fast, "
            "runs on CPU. input_size must be a multiple of 128."
        ),
    ),
)
"""Detectors whose published COCO checkpoint matches their architecture: backbone and decoder load.

Not added: RetinaNet SpineNet-49 mobile (``tf_model_garden/vision/retinanet/spinenet49mobile.tar.gz``,
384 px), because the trainer builds no SpineNet backbone (see FAMILIES).
"""

BUILTIN_MODELS: tuple[ModelSpec, ...] = SEED_MODELS + COCO_MODELS
DEFAULT_MODEL = "ssd-mobilenet-v2-coco"
"""The model a run trains when neither the run nor the deployment names one."""


def load_catalog(extra_file: str | os.PathLike[str] | None = None) -> dict[str, ModelSpec]:
    """The built-in models plus the entries of ``extra_file`` (JSON, or YAML when PyYAML is present).

    An extra entry with a seed's name replaces that seed, so a deployment can point a seed model
    at its own checkpoint. Errors raise :class:`CatalogError` naming the entry and the problem.
    """
    catalog = {spec.name: spec for spec in BUILTIN_MODELS}
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
    if data.get("pretrained") is not None:
        data["pretrained"] = Pretrained.from_dict(data["pretrained"], f"catalogue entry {name!r}")
    if data.get("stage_epochs") is not None:
        data["stage_epochs"] = tuple(int(v) for v in data["stage_epochs"])
        if len(data["stage_epochs"]) != 3:
            raise CatalogError(f"catalogue entry {name!r}: stage_epochs needs three numbers")
    _check_positive(name, data, ("batch_size", "epochs", "steps_per_image", "input_size", "min_clones"), int)
    _check_positive(name, data, ("initial_learning_rate",), float)
    spec = ModelSpec(**data)
    if spec.input_size % spec.size_step:
        raise CatalogError(
            f"catalogue entry {name!r}: input_size {spec.input_size} must be a multiple of {spec.size_step} "
            "(the stride of its coarsest feature level)"
        )
    return spec


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
