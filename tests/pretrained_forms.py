"""Pretrained weights in exactly the forms they are published in, made here (nothing downloads).

Each is made with the Model Garden's (or Keras's) own classes, the way the published files were:

* ImageNet backbones: the Model Garden's image-classification task builds the classification
  model (``mobilenet_imagenet`` / ``resnet_imagenet``) and its ``base_trainer.Trainer`` holds
  the checkpoint, whose top level is ``global_step``, ``model``, ``optimizer`` and the model's
  ``checkpoint_items`` (``backbone``); a ``CheckpointManager`` on the trainer's global step
  writes ``ckpt-{step}``, as ``train_lib`` does (e.g. ``v2_1.0_float/ckpt-180648``).
* COCO detector: the same with the RetinaNet task (``retinanet_resnetfpn_coco``, 91 classes):
  ``checkpoint_items`` are ``backbone``, ``decoder`` and ``head``; packaged as a ``.tar.gz``
  like ``retinanet-resnet50fpn.tar.gz``.
* Keras applications: ``tf_keras.applications.X(include_top=False, weights=None)`` saved with
  ``save_weights`` to ``.h5``, the form of ``..._notop.h5`` / ``NASNet-large-no-top.h5``.

Every variable gets random values before saving (batch-norm statistics included), so a model
that equals the file after loading got it from the file, not from its own initialiser.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras
from official.core import base_trainer, exp_factory
from official.vision.tasks.image_classification import ImageClassificationTask
from official.vision.tasks.retinanet import RetinaNetTask


def _scramble(model: tf_keras.Model, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for var in model.variables:
        if var.dtype.is_floating:
            values = rng.uniform(0.05, 0.5, size=var.shape).astype(var.dtype.as_numpy_dtype)
            var.assign(values)


def _trainer_checkpoint(config, task, model, folder: Path, step: int) -> str:
    """``ckpt-{step}`` in ``folder``, written through the Model Garden trainer's own checkpoint."""
    optimizer = task.create_optimizer(config.trainer.optimizer_config, config.runtime)
    trainer = base_trainer.Trainer(
        config, task, model=model, optimizer=optimizer, train=False, evaluate=False
    )
    trainer.global_step.assign(step)
    manager = tf.train.CheckpointManager(
        trainer.checkpoint, str(folder), max_to_keep=1, step_counter=trainer.global_step
    )
    return manager.save(checkpoint_number=step)


def imagenet_classification(folder: Path, backbone: str, step: int, seed: int = 1) -> str:
    """An ImageNet classification trainer checkpoint for ``backbone`` (mobilenet_v2, resnet50)."""
    name = "mobilenet_imagenet" if backbone == "mobilenet_v2" else "resnet_imagenet"
    config = exp_factory.get_exp_config(name)
    config.task.model.input_size = [64, 64, 3]  # no variable depends on it (global pooling)
    if backbone.startswith("resnet"):
        config.task.model.backbone.resnet.model_id = int(backbone[6:])
    config.runtime.mixed_precision_dtype = "float32"
    task = ImageClassificationTask(config.task)
    model = task.build_model()
    _scramble(model, seed)
    return _trainer_checkpoint(config, task, model, folder, step)


def retinanet_coco(folder: Path, step: int, seed: int = 2, *, min_level: int = 3, max_level: int = 7) -> str:
    """A RetinaNet ResNet-50-FPN COCO trainer checkpoint (91 classes, the published config)."""
    config = exp_factory.get_exp_config("retinanet_resnetfpn_coco")
    config.task.model.input_size = [128, 128, 3]  # anchors are not variables
    config.task.model.min_level, config.task.model.max_level = min_level, max_level
    config.task.init_checkpoint = ""
    config.runtime.mixed_precision_dtype = "float32"
    task = RetinaNetTask(config.task)
    model = task.build_model()
    _scramble(model, seed)
    return _trainer_checkpoint(config, task, model, folder, step)


def keras_notop_h5(path: Path, application: str = "inception_resnet_v2", seed: int = 3) -> Path:
    """A Keras application's weights without the top, saved as Keras saves them (h5)."""
    build = {
        "inception_resnet_v2": tf_keras.applications.InceptionResNetV2,
        "nasnet_large": tf_keras.applications.NASNetLarge,
    }[application]
    model = build(
        include_top=False,
        weights=None,
        input_shape=(None, None, 3) if application != "nasnet_large" else (331, 331, 3),
    )
    _scramble(model, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save_weights(str(path), save_format="h5")
    return path


def tarball(prefix: str, path: Path, inner: str) -> Path:
    """``prefix``'s files (index, data) in a ``.tar.gz`` under ``inner/``, as published."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz", compresslevel=1) as archive:
        for file in sorted(Path(prefix).parent.glob(Path(prefix).name + ".*")):
            archive.add(file, arcname=f"{inner}/{file.name}")
    return path


def checkpoint_values(prefix: str, module: str) -> dict[str, np.ndarray]:
    """The file's values of one top-level item (``backbone``, ``decoder``), by checkpoint key."""
    reader = tf.train.load_checkpoint(prefix)
    return {
        key: reader.get_tensor(key)
        for key in reader.get_variable_to_shape_map()
        if key.startswith(module + "/")
        and key.endswith("/.ATTRIBUTES/VARIABLE_VALUE")
        and ".OPTIMIZER_SLOT" not in key
    }
