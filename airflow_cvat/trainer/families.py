"""Catalogue entry + arguments -> a Model Garden experiment config, and the task that runs it.

One function per family, each starting from the Model Garden's own registered COCO experiment
(``retinanet_resnetfpn_coco``, ``fasterrcnn_resnetfpn_coco``, ``maskrcnn_resnetfpn_coco``) so
we inherit its tuned heads, anchors and losses, and then overriding what must change here:

* ``init_checkpoint`` (a gs:// path by default) is set to the run's local base weights or
  cleared, ``init_checkpoint_modules`` to what those weights provide ("backbone" from an
  ImageNet classification checkpoint or Keras h5, "backbone,decoder" from a COCO detector or
  init-base), and ``annotation_file`` (a COCO file) is cleared so the evaluator builds ground
  truth from the validation TFRecords: nothing is fetched from the network.
* ``num_classes`` = labels + 1 (background), so a new class count gets fresh heads: the heads
  are never read from base weights.
* A catalogue entry's ``options["model"]`` overrides ``task.model`` after the family's own
  settings: an entry that loads a COCO decoder states there the architecture the decoder was
  trained with (levels 3-7, the published FPN), since it loads into no other; entries without
  it get our lighter variants (levels 3-6, the mobile head).
* float32 on CPU; float16 mixed precision on GPU (bfloat16, the default, is for TPUs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from official.core import config_definitions as cfg
from official.core import exp_factory
from official.vision.configs import backbones as backbones_cfg
from official.vision.configs import maskrcnn as maskrcnn_cfg
from official.vision.configs import retinanet as retinanet_cfg

from airflow_cvat.arguments import TrainingArguments
from airflow_cvat.catalog import MODEL_OPTION, ModelSpec
from airflow_cvat.trainer import keras_backbones
from airflow_cvat.trainer.base import BaseWeights

EVAL_BATCH_SIZE = 4


@dataclass
class DataPaths:
    """Where the prepared TFRecords are (local paths: TensorFlow reads them directly)."""

    train: str
    validation: str


def build_config(
    spec: ModelSpec,
    args: TrainingArguments,
    num_classes: int,
    data: DataPaths,
    *,
    base: BaseWeights | None = None,
    use_gpu: bool = False,
) -> cfg.ExperimentConfig:
    """The experiment for ``spec`` with ``num_classes`` labels (background excluded).

    ``base``: the weights training starts from (``pretrained.initialize`` reads the
    ``init_checkpoint`` and ``init_checkpoint_modules`` set from it), or None for random ones.
    """
    builders = {"retinanet": _retinanet, "faster_rcnn": _rcnn, "mask_rcnn": _rcnn}
    config = builders[spec.family](spec)
    task = config.task
    if spec.options.get(MODEL_OPTION):
        task.model.override(spec.options[MODEL_OPTION], is_strict=True)
    task.model.num_classes = num_classes + 1
    task.model.input_size = [args.input_size, args.input_size, 3]
    # Sync BN across replicas only on GPUs: on logical CPU devices it made a step 200x slower.
    task.model.norm_activation.use_sync_bn = use_gpu and args.num_clones > 1
    task.init_checkpoint = base.path if base else ""
    task.init_checkpoint_modules = base.modules_text if base else "backbone"
    task.annotation_file = None
    task.per_category_metrics = True
    dtype = "float16" if use_gpu else "float32"
    config.runtime.mixed_precision_dtype = dtype
    _data(task.train_data, data.train, args.batch_size, training=True, dtype=dtype)
    _data(task.validation_data, data.validation, EVAL_BATCH_SIZE, training=False, dtype=dtype)
    if isinstance(task.model, maskrcnn_cfg.MaskRCNN):
        _fit_roi_sampling(task.model, args.input_size)
    config.trainer.train_steps = args.steps
    config.trainer.checkpoint_interval = args.checkpoint_steps
    return config


def _fit_roi_sampling(model: maskrcnn_cfg.MaskRCNN, input_size: int) -> None:
    """Sample no more RoIs (and masks) per image than the RPN can propose at this input size.

    Why: the ROI sampler takes the top ``num_sampled_rois`` (512) of the proposals, and the RPN
    proposes at most one box per anchor. Small inputs have few anchors (64 px with the Keras
    backbones' levels 3..6: 255), and the sampler then fails with "input must have last
    dimension >= k = 512". Real sizes (320 px and up) keep the Model Garden's numbers.
    """
    per_location = model.anchor.num_scales * len(model.anchor.aspect_ratios)
    levels = range(model.min_level, model.max_level + 1)
    limit = model.roi_generator.num_proposals
    per_level = (min(math.ceil(input_size / 2**level) ** 2 * per_location, limit) for level in levels)
    proposals = min(limit, sum(per_level))
    model.roi_sampler.num_sampled_rois = min(model.roi_sampler.num_sampled_rois, proposals)
    if model.mask_sampler is not None:  # None for Faster R-CNN
        sampler = model.mask_sampler
        sampler.num_sampled_masks = min(sampler.num_sampled_masks, model.roi_sampler.num_sampled_rois)


def _data(data: cfg.DataConfig, pattern: str, batch: int, *, training: bool, dtype: str) -> None:
    data.input_path = pattern
    data.global_batch_size = batch
    data.is_training = training
    data.drop_remainder = training
    data.dtype = dtype
    data.shuffle_buffer_size = 256
    data.cycle_length = 2
    data.parser.aug_rand_hflip = training
    if hasattr(data.parser, "aug_scale_min"):
        data.parser.aug_scale_min, data.parser.aug_scale_max = (0.8, 1.2) if training else (1.0, 1.0)


def _backbone(name: str) -> backbones_cfg.Backbone:
    if name == "mobilenet_v2":
        mobilenet = backbones_cfg.MobileNet(model_id="MobileNetV2")
        return backbones_cfg.Backbone(type="mobilenet", mobilenet=mobilenet)
    if name in ("resnet50", "resnet101"):
        return backbones_cfg.Backbone(type="resnet", resnet=backbones_cfg.ResNet(model_id=int(name[6:])))
    return keras_backbones.backbone_config(name)


def _retinanet(spec: ModelSpec) -> cfg.ExperimentConfig:
    config = exp_factory.get_exp_config("retinanet_resnetfpn_coco")
    model: retinanet_cfg.RetinaNet = config.task.model
    model.backbone = _backbone(spec.backbone)
    # Levels 3..6, not the Model Garden's 3..7: level 7 only exists for sizes that are multiples
    # of 128, and levels must not depend on input_size or a base checkpoint made at one size
    # would not load at another. Arguments require multiples of 64.
    model.min_level, model.max_level = 3, 6
    model.detection_generator.pre_nms_score_threshold = 0.05
    if spec.backbone == "mobilenet_v2":
        _mobile_head(model)
    return config


def _mobile_head(model: retinanet_cfg.RetinaNet) -> None:
    """An SSDLite-like head for the SSD-MobileNet role: separable convs, 128 filters, 2 layers.

    Why: the Model Garden's RetinaNet head (4 full 3x3 convs of 256 filters per level) costs
    several times the MobileNetV2 backbone; SSD-MobileNet-v2 had a light predictor. Measured on
    2 CPU cores at 128 px, batch 4: 3.3 steps/s with the default head, 13 with this one, and the
    same AP50 on the generated shapes.
    """
    model.head.use_separable_conv = True
    model.head.num_filters = 128
    model.head.num_convs = 2
    model.decoder.fpn.use_separable_conv = True
    model.decoder.fpn.num_filters = 128


def _rcnn(spec: ModelSpec) -> cfg.ExperimentConfig:
    name = "maskrcnn_resnetfpn_coco" if spec.family == "mask_rcnn" else "fasterrcnn_resnetfpn_coco"
    config = exp_factory.get_exp_config(name)
    model: maskrcnn_cfg.MaskRCNN = config.task.model
    model.backbone = _backbone(spec.backbone)
    model.include_mask = spec.family == "mask_rcnn"
    if spec.backbone in keras_backbones.KERAS_BACKBONES:
        # Keras application backbones give levels 3..5 only; FPN adds 6 from 5.
        model.min_level, model.max_level = 3, 6
        model.decoder.fpn.fusion_type = "sum"
    if spec.num_proposals:
        model.roi_generator.num_proposals = spec.num_proposals * 2
        model.roi_generator.test_num_proposals = spec.num_proposals
        model.roi_sampler.num_sampled_rois = min(model.roi_sampler.num_sampled_rois, spec.num_proposals * 2)
    config.task.validation_data.parser.mask_crop_size = 112
    return config


def build_task(config: cfg.ExperimentConfig, logging_dir: str | None = None):
    """The Model Garden task object for a config (RetinaNetTask or MaskRCNNTask).

    ``logging_dir``: where MaskRCNNTask writes the ground truth of its COCO evaluator
    (``annotation.json``). Without one it writes to the working directory and then *reuses*
    that file for any later evaluation there, scoring a model against another dataset.
    """
    from official.vision.tasks.maskrcnn import MaskRCNNTask
    from official.vision.tasks.retinanet import RetinaNetTask

    if isinstance(config.task, retinanet_cfg.RetinaNetTask):
        return RetinaNetTask(config.task, logging_dir=logging_dir)
    return MaskRCNNTask(config.task, logging_dir=logging_dir)


def stage_trainable(model, family: str, stage: int) -> None:
    """Mask R-CNN's schedule: 1 heads only (backbone frozen), 2 ResNet stage 4 and up, 3 all.

    "Heads" follows the seed (Matterport's ``heads``): FPN, RPN and the box and mask heads.
    Other families train everything (stage 3).
    """
    backbone = model.backbone
    if family != "mask_rcnn" or stage >= 3:
        backbone.trainable = True
        for layer in backbone.layers:
            layer.trainable = True
        return
    if stage == 1:
        backbone.trainable = False
        return
    backbone.trainable = True
    frozen = True
    for layer in backbone.layers:
        layer.trainable = not frozen
        if layer.name == "block_group_l3":  # the last layer of ResNet stage 3
            frozen = False
