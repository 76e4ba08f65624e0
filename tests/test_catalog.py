"""The catalogue: seven seed models with the seed's defaults, user entries from JSON and YAML."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from airflow_cvat.catalog import (
    BUILTIN_MODELS,
    COCO_MODELS,
    FAMILIES,
    MODEL_OPTION,
    SEED_MODELS,
    CatalogError,
    Pretrained,
    get_model,
    load_catalog,
)
from airflow_cvat.mirrors import MirrorError, mirrored, parse_mirrors

SEED_DEFAULTS = {
    "ssd-mobilenet-v2-coco": ("retinanet", "mobilenet_v2", 24, 0.004, 15000),
    "frcnn-res50-coco": ("faster_rcnn", "resnet50", 1, 0.0003, 10000),
    "frcnn-res50-lowp": ("faster_rcnn", "resnet50", 1, 0.0003, 10000),
    "frcnn-res101-coco": ("faster_rcnn", "resnet101", 1, 0.0003, 10000),
    "frcnn-inc-resv2-atr-coco": ("faster_rcnn", "inception_resnet_v2", 1, 0.0003, 10000),
    "frcnn-nas-coco": ("faster_rcnn", "nasnet_large", 1, 0.0003, 10000),
    "mask-rcnn": ("mask_rcnn", "resnet50", 1, 0.0003, 10000),
}


def test_seven_seed_models_with_seed_defaults():
    catalog = load_catalog()
    assert {spec.name for spec in SEED_MODELS} == set(SEED_DEFAULTS)
    assert set(SEED_DEFAULTS) < set(catalog)
    for name, (family, backbone, batch, lr, epochs) in SEED_DEFAULTS.items():
        spec = catalog[name]
        assert (spec.family, spec.backbone, spec.batch_size, spec.initial_learning_rate, spec.epochs) == (
            family,
            backbone,
            batch,
            lr,
            epochs,
        )
        assert spec.backbone in FAMILIES[spec.family]
    assert catalog["frcnn-nas-coco"].min_clones == 2
    assert catalog["frcnn-res50-lowp"].num_proposals
    assert catalog["mask-rcnn"].stage_epochs == (1, 2, 3)
    assert catalog["ssd-mobilenet-v2-coco"].steps_per_image == 1000
    assert catalog["frcnn-res50-coco"].steps_per_image == 500
    assert len(SEED_MODELS) == 7


def test_unknown_model_lists_valid_names():
    with pytest.raises(CatalogError) as error:
        get_model("yolo")
    assert "ssd-mobilenet-v2-coco" in str(error.value) and "mask-rcnn" in str(error.value)


def test_user_entry_from_json(tmp_path):
    path = tmp_path / "models.json"
    path.write_text(
        json.dumps(
            {
                "models": [
                    {
                        "name": "my-retina",
                        "family": "retinanet",
                        "backbone": "resnet50",
                        "checkpoint": "s3://bucket/base/my-retina",
                        "batch_size": 8,
                    }
                ]
            }
        )
    )
    catalog = load_catalog(path)
    spec = catalog["my-retina"]
    assert spec.checkpoint == "s3://bucket/base/my-retina"
    assert spec.batch_size == 8
    assert spec.initial_learning_rate == 0.004  # from the family's seed
    assert len(catalog) == len(load_catalog()) + 1


def test_user_entry_from_yaml_overrides_a_seed(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text(
        "frcnn-res50-coco:\n  family: faster_rcnn\n  backbone: resnet50\n  checkpoint: file:///models/r50\n"
    )
    assert load_catalog(path)["frcnn-res50-coco"].checkpoint == "file:///models/r50"


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"family": "retinanet", "backbone": "resnet50"}, "no 'name'"),
        ({"name": "x", "family": "yolo", "backbone": "resnet50"}, "family"),
        ({"name": "x", "family": "retinanet", "backbone": "vgg"}, "valid backbones"),
        ({"name": "x", "family": "retinanet", "backbone": "resnet50", "colour": 1}, "unknown keys"),
        ({"name": "x", "family": "retinanet", "backbone": "resnet50", "batch_size": 0}, "positive"),
        ({"name": "x", "family": "retinanet", "backbone": "resnet50", "epochs": 1.5}, "whole"),
        ({"name": "x", "family": "mask_rcnn", "backbone": "resnet50", "stage_epochs": [1]}, "three"),
        (
            {
                "name": "x",
                "family": "retinanet",
                "backbone": "resnet50",
                "input_size": 320,
                "options": {"model": {"min_level": 3, "max_level": 7}},
            },
            "input_size 320 must be a multiple of 128",
        ),
    ],
)
def test_bad_user_entries(tmp_path, entry, message):
    path = tmp_path / "models.json"
    path.write_text(json.dumps([entry]))
    with pytest.raises(CatalogError, match=message):
        load_catalog(path)


def test_bad_files(tmp_path):
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(CatalogError, match="not valid JSON"):
        load_catalog(broken)
    scalar = tmp_path / "scalar.json"
    scalar.write_text("3")
    with pytest.raises(CatalogError, match="expected a list"):
        load_catalog(scalar)


def test_imports_without_tensorflow_or_airflow():
    """Both sides import these; the DAG parser must not pay for TensorFlow (see benchmarks/dag_parse.py)."""
    code = (
        "import sys; import airflow_cvat.catalog, airflow_cvat.arguments, airflow_cvat.mirrors; "
        "heavy = {'tensorflow', 'airflow', 'official', 'numpy', 'yaml', 'requests', 'fsspec'}; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & heavy))"
    )
    assert subprocess.check_output([sys.executable, "-c", code], text=True).strip() == "[]"


GCS = "https://storage.googleapis.com"
R50 = (
    "gs://cloud-tpu-checkpoints/vision-2.0/resnet50_imagenet/ckpt-28080",
    "checkpoint",
    ("backbone",),
    None,
)
PUBLISHED = {
    # name: (uri, format, modules, md5), as confirmed in the publishers' sources (docs/pretrained.md)
    "ssd-mobilenet-v2-coco": (
        "gs://tf_model_garden/vision/mobilenet/v2_1.0_float/ckpt-180648",
        "checkpoint",
        ("backbone",),
        None,
    ),
    "frcnn-res50-coco": R50,
    "frcnn-res50-lowp": R50,
    "mask-rcnn": R50,
    "frcnn-res101-coco": (
        f"{GCS}/tf_model_garden/vision/resnet/resnet-101-i224.tar.gz",
        "checkpoint_tar",
        ("backbone",),
        None,
    ),
    "frcnn-inc-resv2-atr-coco": (
        f"{GCS}/tensorflow/keras-applications/inception_resnet_v2/"
        "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "keras_h5",
        ("backbone",),
        "d19885ff4a710c122648d3b5c3b684e4",
    ),
    "frcnn-nas-coco": (
        f"{GCS}/tensorflow/keras-applications/nasnet/NASNet-large-no-top.h5",
        "keras_h5",
        ("backbone",),
        "d81d89dc07e6e56530c4e77faddd61b5",
    ),
    "retinanet-resnet50fpn-coco": (
        f"{GCS}/tf_model_garden/vision/retinanet/retinanet-resnet50fpn.tar.gz",
        "checkpoint_tar",
        ("backbone", "decoder"),
        None,
    ),
    "retinanet-mobilenetv2-coco": (
        "gs://tf_model_garden/vision/qat/mobilenetv2_ssd_coco/mobilenetv2_ssd_i256_ckpt.tar.gz",
        "checkpoint_tar",
        ("backbone", "decoder"),
        None,
    ),
}


def test_every_builtin_model_names_its_published_weights():
    catalog = load_catalog()
    assert set(catalog) == set(PUBLISHED)
    for name, (uri, form, modules, md5) in PUBLISHED.items():
        pretrained = catalog[name].pretrained
        assert (pretrained.uri, pretrained.format, pretrained.modules, pretrained.md5) == (
            uri,
            form,
            modules,
            md5,
        )
        assert pretrained.dataset in ("ImageNet", "COCO") and pretrained.config and pretrained.input_size
        if pretrained.dataset == "ImageNet":
            assert pretrained.modules == ("backbone",), name  # a classifier has no detection decoder
        assert pretrained.dataset in catalog[name].description, name  # the form tells users where from


def test_coco_detectors_load_their_decoder_into_the_published_architecture():
    """A decoder loads only into the architecture it was trained with: levels 3-7 and its input size."""
    assert {spec.name for spec in COCO_MODELS} == {"retinanet-resnet50fpn-coco", "retinanet-mobilenetv2-coco"}
    for spec in BUILTIN_MODELS:
        loads_decoder = "decoder" in spec.pretrained.modules
        assert loads_decoder == (spec in COCO_MODELS)
        if loads_decoder:
            architecture = spec.options[MODEL_OPTION]
            assert (architecture["min_level"], architecture["max_level"]) == (3, 7)
            assert spec.input_size == spec.pretrained.input_size and spec.input_size % 128 == 0
            assert spec.pretrained.checkpoint and spec.pretrained.dataset == "COCO"
    assert get_model("retinanet-resnet50fpn-coco").size_step == 128
    assert get_model("ssd-mobilenet-v2-coco").size_step == 64
    mobile = get_model("retinanet-mobilenetv2-coco").options[MODEL_OPTION]
    assert mobile["head"] == {"num_convs": 4, "num_filters": 128, "use_separable_conv": True}
    assert mobile["decoder"]["fpn"]["num_filters"] == 128 and mobile["decoder"]["fpn"]["use_separable_conv"]
    assert get_model("retinanet-resnet50fpn-coco").pretrained.config == "retinanet_resnetfpn_coco"


def test_user_entry_declares_pretrained_weights_in_json_and_yaml(tmp_path):
    pretrained = {
        "uri": "s3://models/r50.tar.gz",
        "format": "checkpoint_tar",
        "modules": "backbone, decoder",
        "sha256": "AB" * 32,
        "checkpoint": "ckpt-10",
        "dataset": "COCO",
    }
    path = tmp_path / "models.json"
    path.write_text(json.dumps([{"name": "mine", "family": "retinanet", "backbone": "resnet50",
                                 "pretrained": pretrained}]))  # fmt: skip
    spec = load_catalog(path)["mine"]
    assert spec.pretrained == Pretrained(
        uri="s3://models/r50.tar.gz",
        format="checkpoint_tar",
        modules=("backbone", "decoder"),
        sha256="ab" * 32,
        checkpoint="ckpt-10",
        dataset="COCO",
    )
    assert spec.to_dict()["pretrained"]["modules"] == ["backbone", "decoder"]
    assert json.loads(json.dumps(spec.to_dict()))["pretrained"]["uri"] == "s3://models/r50.tar.gz"

    yaml_path = tmp_path / "models.yaml"
    yaml_path.write_text(
        "frcnn-nas-coco:\n  family: faster_rcnn\n  backbone: nasnet_large\n  pretrained:\n"
        "    uri: file:///weights/nasnet.h5\n    format: keras_h5\n    modules: [backbone]\n"
        "    md5: d81d89dc07e6e56530c4e77faddd61b5\n"
    )
    assert load_catalog(yaml_path)["frcnn-nas-coco"].pretrained.uri == "file:///weights/nasnet.h5"


@pytest.mark.parametrize(
    "pretrained, message",
    [
        ("gs://b/x.tar.gz", "pretrained must be a mapping"),
        ({"uri": "gs://b/x.tar.gz", "format": "checkpoint_tar"}, r"needs \['modules'\]"),
        ({"uri": "ftp://b/x.tar.gz", "format": "checkpoint_tar", "modules": ["backbone"]}, "uri must start"),
        ({"uri": "gs://b/x.zip", "format": "zip", "modules": ["backbone"]}, "format 'zip' is not one of"),
        ({"uri": "gs://b/x.zip", "format": "checkpoint_tar", "modules": ["backbone"]}, "needs a .tar.gz"),
        ({"uri": "gs://b/x.h5", "format": "keras_h5", "modules": ["backbone", "decoder"]}, "backbone only"),
        ({"uri": "gs://b/ckpt-1", "format": "checkpoint", "modules": ["head"]}, "subset of"),
        (
            {"uri": "gs://b/x.h5", "format": "keras_h5", "modules": ["backbone"], "md5": "123"},
            "32 lower-case hex",
        ),
        (
            {"uri": "gs://b/ckpt-1", "format": "checkpoint", "modules": ["backbone"], "sha256": "a" * 64},
            "several files",
        ),
        (
            {"uri": "gs://b/x.tgz", "format": "checkpoint_tar", "modules": ["backbone"], "size": 3},
            "unknown pretrained",
        ),
    ],
)
def test_bad_pretrained_is_refused_saying_why(tmp_path, pretrained, message):
    path = tmp_path / "models.json"
    path.write_text(
        json.dumps([{"name": "x", "family": "retinanet", "backbone": "resnet50", "pretrained": pretrained}])
    )
    with pytest.raises(CatalogError, match=f"catalogue entry 'x'.*{message}"):
        load_catalog(path)


def test_mirror_mapping_longest_prefix_and_gs():
    mirrors = parse_mirrors(
        {
            "https://storage.googleapis.com/": "s3://internal/mirror/",
            "gs://tf_model_garden/vision/retinanet/": "file:///data/retinanet/",
        },
        "test",
    )
    assert mirrored("gs://cloud-tpu-checkpoints/vision-2.0/resnet50_imagenet/ckpt-28080", mirrors) == (
        "s3://internal/mirror/cloud-tpu-checkpoints/vision-2.0/resnet50_imagenet/ckpt-28080"
    )
    assert mirrored(f"{GCS}/tf_model_garden/vision/retinanet/retinanet-resnet50fpn.tar.gz", mirrors) == (
        "file:///data/retinanet/retinanet-resnet50fpn.tar.gz"
    )
    assert mirrored("gs://other/x", {}) == f"{GCS}/other/x"
    assert mirrored("s3://mine/x", mirrors) == "s3://mine/x"
    assert parse_mirrors('{"https://a/": "s3://b/"}', "test") == {"https://a/": "s3://b/"}
    for bad, message in [
        ("[1]", "must map public URL prefixes"),
        ('{"https://a/": "bucket/"}', "must start with one of"),
        ('{"https://a/": "s3://b"}', "end both with '/' or neither"),
        ("{", "not valid JSON"),
    ]:
        with pytest.raises(MirrorError, match=message):
            parse_mirrors(bad, "the setting")
