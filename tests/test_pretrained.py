"""Pretrained weights: published forms -> pull through the mirror -> the trainer loads and proves it.

Made here with the Model Garden's and Keras's own classes (``tests/pretrained_forms.py``), in
the forms and at the URL paths they are published under, and served over HTTP on loopback as
the mirror of storage.googleapis.com. Then ``BaseModelPullOperator`` pulls them, the trainer
builds the catalogue model, loads the pulled folder, and the test compares the model with the
file independently of the trainer's own bookkeeping: the multiset of the module's values must
equal the multiset of the file's (every file value is random, so only a real load matches).

One process, module-scoped fixtures: each published file is made once; each model is built
once. Measured (``--durations=0``, 2 CPU cores shared with other TensorFlow jobs, load ~9):
380 s wall, about 135 CPU-seconds: making the four published files + building Mask R-CNN 151 s,
the end-to-end train/evaluate/export run 137 s, Faster R-CNN with Inception-ResNet-v2 64 s, the
COCO RetinaNet 13 s, the refused run 12 s.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from collections import Counter
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from airflow.sdk.exceptions import AirflowException  # noqa: E402

from airflow_cvat.arguments import parse_arguments  # noqa: E402
from airflow_cvat.catalog import get_model, load_catalog  # noqa: E402
from airflow_cvat.mirrors import GCS_HTTPS, public_uri  # noqa: E402
from airflow_cvat.operators.base_model import BaseModelPullOperator  # noqa: E402
from airflow_cvat.trainer import base, cli, families, pretrained  # noqa: E402
from demo_data.datasets import make_dataset  # noqa: E402
from tests import pretrained_forms as forms  # noqa: E402
from tests.trainer_helpers import train_argv  # noqa: E402

MOBILENET = "ssd-mobilenet-v2-coco"
MASK = "mask-rcnn"
COCO = "retinanet-resnet50fpn-coco"
KERAS = "frcnn-inc-resv2-atr-coco"


pytestmark = pytest.mark.slow  # builds models and starts TensorFlow: after the light tests


def _published_path(www: Path, model: str) -> Path:
    """Where ``model``'s published file lies in the served tree (its storage.googleapis.com path)."""
    uri = public_uri(get_model(model).pretrained.uri)
    return www / uri.removeprefix(GCS_HTTPS)


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> dict:
    """The published files, made once and served on loopback at their published paths."""
    root = tmp_path_factory.mktemp("published")
    www, scratch = root / "www", root / "scratch"
    mobilenet = _published_path(www, MOBILENET)  # .../v2_1.0_float/ckpt-180648 (a prefix)
    forms.imagenet_classification(mobilenet.parent, "mobilenet_v2", step=int(mobilenet.name.split("-")[1]))
    resnet = _published_path(www, MASK)  # .../resnet50_imagenet/ckpt-28080 (a prefix)
    forms.imagenet_classification(resnet.parent, "resnet50", step=int(resnet.name.split("-")[1]))
    coco = get_model(COCO).pretrained
    prefix = forms.retinanet_coco(scratch / "retinanet", step=int(coco.checkpoint.split("-")[1]))
    forms.tarball(prefix, _published_path(www, COCO), inner="retinanet-resnet50fpn")
    h5 = forms.keras_notop_h5(_published_path(www, KERAS), "inception_resnet_v2")

    handler = functools.partial(_QuietHandler, directory=str(www))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {
        "url": f"http://127.0.0.1:{server.server_address[1]}/",
        "root": root,
        "h5": h5,
        "files": {MOBILENET: str(mobilenet), MASK: str(resnet), COCO: prefix},
    }
    server.shutdown()
    server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def _pull(mirror: dict, model: str, catalog_file: str | None = None) -> str:
    """Pull ``model``'s published weights through the mirror setting into the test's root."""
    operator = BaseModelPullOperator(
        task_id=f"pull_{model}",
        model=model,
        root=f"file://{mirror['root']}/root",
        catalog_file=catalog_file,
        mirrors={GCS_HTTPS: mirror["url"]},
    )
    return operator.execute(context={})


def _build(model: str, arguments: str, weights: base.BaseWeights | None, catalog=None):
    spec = get_model(model, catalog)
    args = parse_arguments(model, arguments, catalog=catalog)
    config = families.build_config(spec, args, 3, families.DataPaths("unused", "unused"), base=weights)
    return families.build_task(config).build_model(), config


def _fingerprints(arrays) -> Counter:
    return Counter(hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest() for a in arrays)


def _assert_module_equals_file(module, prefix: str, name: str) -> None:
    """The module's values are exactly the file's values of that top-level item (as multisets)."""
    stored = forms.checkpoint_values(prefix, name)
    assert stored, f"the file has no {name}"
    assert _fingerprints(v.numpy() for v in module.variables) == _fingerprints(stored.values())


# -- ImageNet backbones (classification checkpoints) -------------------------------------------


@pytest.fixture(scope="module")
def mask_rcnn(mirror):
    """mask-rcnn built and initialised from the pulled ImageNet ResNet-50 checkpoint."""
    weights = base.stage(_pull(mirror, MASK), mirror["root"] / "unused")
    model, config = _build(MASK, "batch_size=1;input_size=64", weights)
    return model, pretrained.initialize(model, config.task), weights


def test_mask_rcnn_backbone_is_the_imagenet_checkpoint_and_stages_still_apply(mirror, mask_rcnn) -> None:
    model, report, weights = mask_rcnn
    assert weights.format == "checkpoint" and weights.modules == ("backbone",) and not weights.random
    assert weights.source == get_model(MASK).pretrained.uri  # the published URI, not the mirror
    restored = report["restored"]
    assert set(restored) == {"backbone"}  # the heads and the FPN start fresh
    assert restored["backbone"]["variables"] == restored["backbone"]["variables_total"] == 265
    assert restored["backbone"]["parameters"] == restored["backbone"]["parameters_total"] == 23_561_152
    _assert_module_equals_file(model.backbone, mirror["files"][MASK], "backbone")

    # The three-stage schedule still works on the loaded backbone: frozen, ResNet stage 4 up, all.
    trainable = []
    for stage in (1, 2, 3):
        families.stage_trainable(model, "mask_rcnn", stage)
        trainable.append(len(model.backbone.trainable_variables))
    assert trainable[0] == 0 < trainable[1] < trainable[2]


def test_training_from_the_pulled_imagenet_backbone_reports_what_it_restored(
    mirror, tmp_path, caplog, monkeypatch
) -> None:
    """The real command (in this process): result JSON and log say what was restored, out of how many."""
    monkeypatch.setenv("AIRFLOW_CVAT_GRAPH_OPTIMIZER", "0")  # compile less: a CI aid (runtime.py)
    folder = _pull(mirror, MOBILENET)
    assert (
        json.loads((Path(folder.removeprefix("file://")) / base.PULLED).read_text())["format"] == "checkpoint"
    )
    dataset = make_dataset(tmp_path / "dataset", 6, size=64)
    result_file = tmp_path / "result.json"
    caplog.set_level("INFO", logger="airflow_cvat.trainer.pretrained")
    code = cli.main(
        [
            "train",
            "--dataset",
            dataset.as_uri(),
            "--output",
            (tmp_path / "run").as_uri(),
            "--model",
            MOBILENET,
            "--base-checkpoint",
            folder,
            "--arguments",
            "epochs=2;batch_size=2;input_size=64;eval_steps=0",
            "--validation-fraction",
            "0.5",
            "--result-file",
            str(result_file),
        ]
    )
    result = json.loads(result_file.read_text())
    assert code == 0, result
    loaded = result["base_weights"]
    assert loaded["weights"] == "pretrained" and loaded["modules"] == ["backbone"]
    assert loaded["source"] == get_model(MOBILENET).pretrained.uri
    assert loaded["restored"] == {
        "backbone": {
            "variables": 260,
            "variables_total": 260,
            "parameters": 2_257_984,
            "parameters_total": 2_257_984,
        }
    }
    assert "backbone: 260 of 260 variables (2,257,984 of 2,257,984 parameters)" in caplog.text


def test_checkpoint_of_another_architecture_is_refused_before_training(mirror, tmp_path) -> None:
    """The COCO ResNet-50 RetinaNet given to the MobileNetV2 model: exit 2, saying what differs."""
    folder = _pull(mirror, COCO)
    dataset = make_dataset(tmp_path / "dataset", 4, size=64)
    output = tmp_path / "run"
    result_file = tmp_path / "result.json"
    code = cli.main(
        train_argv(dataset, output, MOBILENET, "epochs=2;batch_size=2;input_size=64",
                   "--base-checkpoint", folder, "--validation-fraction", "0.5",
                   "--result-file", str(result_file))
    )  # fmt: skip
    result = json.loads(result_file.read_text())
    assert code == cli.EXIT_BAD_INPUT, result
    error = result["error"]
    assert "does not fit this model" in error
    assert "backbone variables missing, first: backbone/" in error
    assert "shape mismatches, first: " in error and "expected (" in error
    assert not list((output / "checkpoints").glob("ckpt-*")), "a training step ran"


# -- COCO detector (RetinaNet trainer checkpoint, tarball) -------------------------------------


def test_coco_retinanet_loads_backbone_and_decoder(mirror) -> None:
    folder = _pull(mirror, COCO)
    weights = base.stage(folder, mirror["root"] / "unused")
    assert weights.modules == ("backbone", "decoder")
    assert Path(weights.path).name == get_model(COCO).pretrained.checkpoint  # ckpt-33264 from the tarball
    model, config = _build(COCO, "batch_size=2;input_size=128", weights)
    report = pretrained.initialize(model, config.task)["restored"]
    assert report["backbone"]["variables"] == report["backbone"]["variables_total"] == 265
    assert report["decoder"]["variables"] == report["decoder"]["variables_total"] > 0
    _assert_module_equals_file(model.backbone, mirror["files"][COCO], "backbone")
    _assert_module_equals_file(model.decoder, mirror["files"][COCO], "decoder")
    # The heads are not read: the file's 91-class head is not in the model.
    head = forms.checkpoint_values(mirror["files"][COCO], "head")
    assert not _fingerprints(v.numpy() for v in model.head.variables) & _fingerprints(head.values())


# -- Keras application h5 (Inception-ResNet-v2 without top) ------------------------------------


def test_keras_h5_backbone_equals_the_file_and_the_published_md5_is_enforced(mirror, tmp_path) -> None:
    h5 = mirror["h5"]
    md5 = hashlib.md5(h5.read_bytes()).hexdigest()
    with pytest.raises(AirflowException, match="md5"):  # the built-in entry pins Keras's md5
        _pull(mirror, KERAS)
    # The same entry with this file's md5, as a deployment's catalogue would pin its own copy.
    entry = {**get_model(KERAS).to_dict(), "name": KERAS}
    entry["pretrained"]["md5"] = md5
    entry.pop("stage_epochs", None)
    catalog_file = tmp_path / "catalog.json"
    catalog_file.write_text(json.dumps({"models": [entry]}))
    weights = base.stage(_pull(mirror, KERAS, str(catalog_file)), tmp_path / "unused")
    assert weights.format == "keras_h5"
    catalog = load_catalog(str(catalog_file))
    model, config = _build(KERAS, "epochs=2;batch_size=1;input_size=128", weights, catalog)
    report = pretrained.initialize(model, config.task)["restored"]["backbone"]
    assert report["variables"] == report["variables_total"] == len(model.backbone.variables)
    assert report["parameters"] == 54_336_736  # Inception-ResNet-v2 without its top
    import h5py

    with h5py.File(h5, "r") as handle:
        arrays = []
        handle.visititems(lambda _, obj: arrays.append(obj[()]) if isinstance(obj, h5py.Dataset) else None)
    assert _fingerprints(v.numpy() for v in model.backbone.variables) == _fingerprints(arrays)
    # A file one layer short (another architecture) is refused before anything is set, saying where.
    layers = [layer for layer in model.backbone.application_layers if layer.weights]
    problem = pretrained.compare_h5(layers, pretrained.h5_layers(str(h5))[1:])
    assert f"the backbone has {len(layers)} layers with weights, the file {len(layers) - 1}" in problem
    assert "shape mismatches, first: layer 0" in problem


def test_h5_weights_for_a_non_keras_backbone_are_refused(mirror, mask_rcnn) -> None:
    model = mask_rcnn[0]
    task = type("Task", (), {"init_checkpoint": str(mirror["h5"]), "init_checkpoint_modules": "backbone"})
    with pytest.raises(pretrained.CheckpointMismatch, match="not a Keras application"):
        pretrained.initialize(model, task)


# -- what a --base-checkpoint folder says (no TensorFlow needed) -------------------------------


def _folder(tmp_path: Path, pulled: dict | None = None, description: dict | None = None) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "ckpt-3.index").write_bytes(b"")
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "ckpt-3"\n')
    if pulled is not None:
        (tmp_path / base.PULLED).write_text(json.dumps(pulled))
    if description is not None:
        (tmp_path / base.DESCRIPTION).write_text(json.dumps(description))
    return tmp_path


def test_folders_say_format_modules_and_whether_weights_are_random(tmp_path: Path) -> None:
    published = "gs://tf_model_garden/vision/mobilenet/v2_1.0_float/ckpt-180648"
    pulled = {"format": "checkpoint", "modules": ["backbone"], "checkpoint": "ckpt-3", "published": published}
    weights = base.stage(str(_folder(tmp_path / "a", pulled)), tmp_path)
    assert (weights.modules, weights.source, weights.random) == (("backbone",), published, False)
    assert weights.to_dict()["weights"] == "pretrained"

    init_base = {"format": "checkpoint", "modules": ["backbone", "decoder"], "checkpoint": "ckpt-3"}
    weights = base.stage(
        str(_folder(tmp_path / "b", {**init_base, "weights": "random (init-base)"})), tmp_path
    )
    assert weights.random and weights.to_dict()["weights"] == "random (init-base)"
    written = base.stage(
        str(_folder(tmp_path / "c", description={"weights": "random (init-base)"})), tmp_path
    )
    assert written.random and written.modules == ("backbone", "decoder")
    plain = base.stage(str(tmp_path / "c" / "ckpt-3"), tmp_path)  # a bare prefix: the init-base form
    assert (plain.modules, plain.random) == (("backbone", "decoder"), False)

    with pytest.raises(ValueError, match="format 'onnx' is not one of"):
        base.stage(str(_folder(tmp_path / "d", {**pulled, "format": "onnx"})), tmp_path)
    with pytest.raises(FileNotFoundError, match="names checkpoint 'ckpt-9'"):
        base.stage(str(_folder(tmp_path / "e", {**pulled, "checkpoint": "ckpt-9"})), tmp_path)


def test_weights_that_cannot_fit_the_entry_are_refused_before_tensorflow(tmp_path: Path) -> None:
    (tmp_path / "w.h5").write_bytes(b"")
    pulled = {"format": "keras_h5", "modules": ["backbone"], "checkpoint": "w.h5"}
    (tmp_path / base.PULLED).write_text(json.dumps(pulled))
    weights = base.stage(str(tmp_path), tmp_path / "x")
    with pytest.raises(cli.BadInput, match="Keras h5 weights fit only"):
        cli._check_base(get_model(MASK), parse_arguments(MASK, None), weights)
    coco = base.stage(str(_folder(tmp_path / "f")), tmp_path)
    with pytest.raises(cli.BadInput, match="multiple of 128"):
        cli._check_base(get_model(COCO), parse_arguments(COCO, "input_size=192"), coco)
