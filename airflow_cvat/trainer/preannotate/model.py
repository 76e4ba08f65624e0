"""Which published model pre-annotates, on local disk, and its detector.

The model URI may be a version folder, a model folder or its LATEST file: the rules of
:func:`airflow_cvat.preannotation_request.locate_model`, shared with the operator.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import numpy as np

from airflow_cvat.envelope import BadInput
from airflow_cvat.preannotation_request import SAVED_MODEL_FILE, locate_model, version_of

log = logging.getLogger("airflow_cvat.preannotate")


@dataclass
class ModelFiles:
    """A published version on local disk: the SavedModel and class id -> label name."""

    version_uri: str
    saved_model: str
    classes: dict[int, str]


def resolve_version(uri: str) -> str:
    """The version folder a model URI means: itself, or what the model's LATEST names."""
    from airflow_cvat.trainer import storage

    located, is_version = locate_model(uri, storage.exists)
    if is_version:
        return located
    folder = version_of(located, storage.read_text(located))
    if not storage.exists(storage.join(folder, SAVED_MODEL_FILE)):
        version = folder.rsplit("/", 1)[1]
        raise BadInput(f"{located} names version {version!r}, but {folder} holds no saved_model/")
    return folder


def load_classes(text: str) -> dict[int, str]:
    """label_map.json (``{"labels": [{"id", "name"}, ...]}``) as contiguous id -> name."""
    try:
        labels = json.loads(text)["labels"]
        return {int(entry["id"]): str(entry["name"]) for entry in labels}
    except (ValueError, KeyError, TypeError):
        raise BadInput('label_map.json must be {"labels": [{"id": 1, "name": "..."}, ...]}') from None


def fetch_model(uri: str, scratch: str) -> ModelFiles:
    """Resolve the version and bring saved_model/ and label_map.json to local disk."""
    from airflow_cvat.trainer import storage

    version = resolve_version(uri)
    workspace = storage.Workspace(version, scratch=scratch if not storage.is_local(version) else None)
    if not workspace.exists("label_map.json"):
        raise BadInput(f"{version} has no label_map.json: class ids cannot be matched to CVAT labels")
    if not workspace.exists("PUBLISHED.json"):
        log.warning("%s has no PUBLISHED.json: it may not be a completely published version", version)
    saved_model = workspace.pull("saved_model")
    classes = load_classes(workspace.pull("label_map.json").read_text())
    return ModelFiles(version_uri=version, saved_model=str(saved_model), classes=classes)


class Detector:
    """The SavedModel's ``serving_default`` signature (see :mod:`airflow_cvat.trainer.export`)."""

    def __init__(self, path: str) -> None:
        import tensorflow as tf  # here, not at module import: the helpers are tested without it

        self._tf = tf
        try:
            loaded = tf.saved_model.load(path)
        except (OSError, ValueError) as error:
            raise BadInput(f"cannot load the SavedModel at {path}: {error}") from None
        if "serving_default" not in loaded.signatures:
            raise BadInput(f"the SavedModel at {path} has no serving_default signature")
        self._loaded = loaded  # keep the object alive: the signature refers to its variables
        self._serve = loaded.signatures["serving_default"]

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self._serve(images=self._tf.constant(images, dtype=self._tf.uint8))
        return {name: value.numpy() for name, value in outputs.items()}
