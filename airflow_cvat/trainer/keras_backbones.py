"""Keras's Inception-ResNet-v2 and NASNet-Large as Model Garden backbones.

Why: the seed offered Faster R-CNN with these two, and the Model Garden has neither, but it
lets a project register its own backbone (``register_backbone_builder``) behind a config type.
We wrap the Keras application (no top, no weights: the published ImageNet h5 is loaded
afterwards, in the application's own layer order, by ``pretrained.py``) and
expose its last feature map at strides 8, 16 and 32 as levels "3", "4", "5", which the FPN
decoder consumes like ResNet's. Keras's "valid" convolutions give sizes that are not exact
multiples of the stride, so each level is resized to ceil(size / stride) to keep the FPN's
top-down additions aligned.

Not implemented: the atrous (output stride 16) variant of Inception-ResNet-v2 that the TF1
model used; level 5 here is the ordinary stride-32 map.
"""

from __future__ import annotations

import dataclasses
import math

import tensorflow as tf
import tf_keras
from official.modeling import hyperparams
from official.vision.configs import backbones as backbones_cfg
from official.vision.modeling.backbones import factory

KERAS_BACKBONES = ("inception_resnet_v2", "nasnet_large")
LEVELS = (3, 4, 5)


@dataclasses.dataclass
class KerasApplication(hyperparams.Config):
    """Config of a Keras application backbone (only the name: weights come from checkpoints)."""

    application: str = "inception_resnet_v2"


@dataclasses.dataclass
class Backbone(backbones_cfg.Backbone):
    """The Model Garden's backbone one-of, plus our two Keras backbones."""

    inception_resnet_v2: KerasApplication = dataclasses.field(
        default_factory=lambda: KerasApplication(application="inception_resnet_v2")
    )
    nasnet_large: KerasApplication = dataclasses.field(
        default_factory=lambda: KerasApplication(application="nasnet_large")
    )


def backbone_config(name: str) -> Backbone:
    if name not in KERAS_BACKBONES:
        raise ValueError(f"unknown Keras backbone {name!r}; valid: {KERAS_BACKBONES}")
    return Backbone(type=name)


def _application(name: str, shape: tuple[int, int, int]) -> tf_keras.Model:
    if name == "inception_resnet_v2":
        return tf_keras.applications.InceptionResNetV2(include_top=False, weights=None, input_shape=shape)
    return tf_keras.applications.NASNetLarge(include_top=False, weights=None, input_shape=shape)


def _level_layers(model: tf_keras.Model, size: int) -> dict[int, tf_keras.layers.Layer]:
    """The last layer at each stride 2**level (names differ per model, so go by output sizes).

    "valid" convolutions shrink maps by a few pixels without a stride, so a size is one level
    below the next larger size only when it is at least 1.5 times smaller.
    """
    levels: dict[int, int] = {size: 0}
    chosen: dict[int, tf_keras.layers.Layer] = {}
    for layer in model.layers:
        shape = getattr(layer, "output", None)
        shape = getattr(shape, "shape", None)
        if shape is None or len(shape) != 4 or not shape[1]:
            continue
        height = int(shape[1])
        if height not in levels:
            larger = min((s for s in levels if s > height), default=size)
            levels[height] = levels[larger] + (1 if larger / height >= 1.5 else 0)
        if levels[height] in LEVELS:
            chosen[levels[height]] = layer
    missing = [lv for lv in LEVELS if lv not in chosen]
    if missing:
        raise ValueError(f"input size {size} is too small for this backbone (no stride 2**{missing})")
    return chosen


class KerasApplicationBackbone(tf_keras.Model):
    """A Keras application cut at strides 8/16/32, with the Model Garden's ``output_specs``."""

    _application_layers: tuple[tf_keras.layers.Layer, ...] = ()
    """The application's layers in its own order, the order its published h5 weights are in.

    A class attribute so that Keras does not track the assignment in ``__init__``: the layers
    are tracked already, and a new tracked attribute would change the checkpoint layout.
    """

    def __init__(self, application: str, input_specs: tf_keras.layers.InputSpec, **kwargs):
        height, width = input_specs.shape[1], input_specs.shape[2]
        if not height or not width:
            raise ValueError("Keras backbones need a fixed input size")
        base = _application(application, (height, width, 3))
        layers = _level_layers(base, height)
        features = tf_keras.Model(base.input, {str(lv): layers[lv].output for lv in LEVELS})
        inputs = tf_keras.Input(shape=(height, width, 3))
        raw = features(inputs)
        endpoints = {}
        for lv in LEVELS:
            size = (math.ceil(height / 2**lv), math.ceil(width / 2**lv))
            endpoints[str(lv)] = tf_keras.layers.Resizing(*size, name=f"level_{lv}_resize")(raw[str(lv)])
        super().__init__(inputs=inputs, outputs=endpoints, **kwargs)
        self._application = application
        self._application_layers = tuple(base.layers)
        self._output_specs = {key: value.get_shape() for key, value in endpoints.items()}

    @property
    def output_specs(self):
        return self._output_specs

    @property
    def application_layers(self) -> tuple[tf_keras.layers.Layer, ...]:
        """The wrapped application's layers in the order Keras saves (and loads) its h5 weights."""
        return self._application_layers

    def get_config(self):
        return {"application": self._application}


def _builder(name: str):
    def build(input_specs, backbone_config, norm_activation_config=None, l2_regularizer=None):
        del norm_activation_config, l2_regularizer  # the Keras application brings its own
        return KerasApplicationBackbone(name, input_specs, name=name)

    return build


for _name in KERAS_BACKBONES:
    if _name not in factory._REGISTERED_BACKBONE_CLS:  # re-imports must not register twice
        factory.register_backbone_builder(_name)(_builder(_name))

__all__ = ["KERAS_BACKBONES", "Backbone", "backbone_config", "KerasApplicationBackbone", "tf"]
