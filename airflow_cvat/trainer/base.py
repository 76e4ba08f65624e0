"""Base checkpoints: the starting weights of fine-tuning, and ``init-base`` to make one offline.

Form (the one the Model Garden's ``init_checkpoint`` reads with ``init_checkpoint_modules``
"backbone,decoder"): a ``tf.train.Checkpoint(backbone=..., decoder=...)`` saved as
``{folder}/ckpt-1.index`` + ``ckpt-1.data-*`` with a ``checkpoint`` index file, plus
``base_model.json`` describing it. The heads are never in it: the class count of a CVAT task
is not the base model's, so heads always start fresh.

``init-base`` writes such a checkpoint with random weights (nothing can be downloaded here):
tests and the offline demo fine-tune from it exactly as production fine-tunes from a real one.
"""

from __future__ import annotations

import json
from pathlib import Path

import tensorflow as tf

from airflow_cvat.arguments import TrainingArguments
from airflow_cvat.catalog import ModelSpec
from airflow_cvat.trainer import families, storage
from airflow_cvat.trainer.storage import Workspace

DESCRIPTION = "base_model.json"


def init_base(spec: ModelSpec, args: TrainingArguments, output_uri: str) -> dict:
    """Write a randomly initialised backbone + decoder checkpoint for ``spec`` to ``output_uri``."""
    workspace = Workspace(output_uri)
    data = families.DataPaths(train="unused", validation="unused")
    config = families.build_config(spec, args, 1, data)
    model = families.build_task(config).build_model()
    checkpoint = tf.train.Checkpoint(backbone=model.backbone, decoder=model.decoder)
    prefix = checkpoint.save(str(workspace.path("ckpt")))
    description = {
        "model": spec.name,
        "family": spec.family,
        "backbone": spec.backbone,
        "modules": families.BASE_CHECKPOINT_MODULES,
        "checkpoint": Path(prefix).name,
        "weights": "random (init-base)",
    }
    workspace.path(DESCRIPTION).write_text(json.dumps(description, indent=2))
    workspace.push()
    return {"checkpoint": workspace.uri_of(Path(prefix).name), "base_model": workspace.uri}


def stage_checkpoint(uri: str, local_dir: Path) -> str:
    """A local checkpoint path for ``uri`` (a folder with a ``checkpoint`` file, or a prefix)."""
    if storage.is_local(uri):
        path = storage.split_uri(uri)[1]
        if Path(path).is_dir():
            latest = tf.train.latest_checkpoint(path)
            if latest is None:
                raise FileNotFoundError(f"no checkpoint in base checkpoint folder {uri}")
            return latest
        if not Path(path + ".index").exists():
            raise FileNotFoundError(f"base checkpoint {uri} not found (no {uri}.index)")
        return path
    fs, remote = storage.split_uri(uri)
    local_dir.mkdir(parents=True, exist_ok=True)
    if fs.isdir(remote):
        fs.get(remote.rstrip("/") + "/", str(local_dir) + "/", recursive=True)
        return stage_checkpoint(str(local_dir), local_dir)
    files = fs.glob(remote + ".*")
    if not files:
        raise FileNotFoundError(f"base checkpoint {uri} not found")
    for name in files:
        fs.get(name, str(local_dir / Path(name).name))
    return str(local_dir / Path(remote).name)
