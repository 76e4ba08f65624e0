"""The catalogue: seven seed models with the seed's defaults, user entries from JSON and YAML."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from airflow_cvat.catalog import FAMILIES, SEED_MODELS, CatalogError, get_model, load_catalog

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
        "import sys; import airflow_cvat.catalog, airflow_cvat.arguments; "
        "heavy = {'tensorflow', 'airflow', 'official', 'numpy'}; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & heavy))"
    )
    assert subprocess.check_output([sys.executable, "-c", code], text=True).strip() == "[]"
