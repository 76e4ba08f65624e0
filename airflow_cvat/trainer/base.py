"""Base weights: where a run's starting weights are, in which form, and ``init-base``.

A run's ``--base-checkpoint`` (or the catalogue entry's ``checkpoint``) is one of:

* a folder the pull operator filled, ``{root}/base_models/{name}/``: its ``pulled.json``
  (written last, so a folder without it is not complete) says the format, the modules to read
  and the relative path of the checkpoint prefix or ``.h5`` file;
* a folder ``init-base`` wrote: a ``tf.train.Checkpoint(backbone=..., decoder=...)`` with
  ``base_model.json`` saying its weights are random;
* a plain checkpoint prefix (or a folder with a ``checkpoint`` state file): read as the
  init-base form, backbone and decoder.

:func:`stage` downloads it when remote and returns a :class:`BaseWeights`. What is then read
from it, checked against the model and proven restored is :mod:`airflow_cvat.trainer.pretrained`.
The heads are never read: the class count of a CVAT task is not the base model's.

``init-base`` writes a checkpoint with random weights (nothing can be downloaded here): tests
and the offline demo fine-tune from it exactly as production fine-tunes from a real one.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from airflow_cvat.arguments import TrainingArguments
from airflow_cvat.catalog import ModelSpec
from airflow_cvat.trainer import storage
from airflow_cvat.trainer.storage import Workspace

DESCRIPTION = "base_model.json"
"""What ``init-base`` writes next to its checkpoint."""
PULLED = "pulled.json"
"""What the pull operator writes last into ``{root}/base_models/{name}/``."""
INIT_BASE_MODULES = ("backbone", "decoder")
"""The modules of an init-base checkpoint, and of a plain prefix with no description."""
FORMATS = {"checkpoint": "checkpoint", "checkpoint_tar": "checkpoint", "keras_h5": "keras_h5"}
"""Published format -> what the trainer reads once it is pulled (a tarball is unpacked)."""
_STATE_LINE = re.compile(r'^model_checkpoint_path:\s*"(.*)"', re.MULTILINE)


@dataclass(frozen=True)
class BaseWeights:
    """Local weights to start from, and what to read from them.

    ``path``: a ``tf.train`` checkpoint prefix (``format`` "checkpoint") or an ``.h5`` file
    (``format`` "keras_h5"). ``random``: made by ``init-base`` (reported, so nobody mistakes a
    run from random weights for a fine-tuned one).
    """

    path: str
    format: str
    modules: tuple[str, ...]
    source: str
    random: bool = False
    name: str | None = None

    @property
    def modules_text(self) -> str:
        """The Model Garden's ``init_checkpoint_modules`` form, e.g. ``"backbone,decoder"``."""
        return ",".join(self.modules)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["modules"] = list(self.modules)
        data["weights"] = "random (init-base)" if self.random else "pretrained"
        return data


def init_base(spec: ModelSpec, args: TrainingArguments, output_uri: str) -> dict:
    """Write a randomly initialised backbone + decoder checkpoint for ``spec`` to ``output_uri``."""
    import tensorflow as tf

    from airflow_cvat.trainer import families

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
        "modules": ",".join(INIT_BASE_MODULES),
        "checkpoint": Path(prefix).name,
        "weights": "random (init-base)",
    }
    workspace.path(DESCRIPTION).write_text(json.dumps(description, indent=2))
    workspace.push()
    return {"checkpoint": workspace.uri_of(Path(prefix).name), "base_model": workspace.uri}


def stage(uri: str, local_dir: Path) -> BaseWeights:
    """The base weights at ``uri``, downloaded under ``local_dir`` when remote.

    Raises FileNotFoundError (the CLI's bad input) when nothing usable is there, and ValueError
    when ``pulled.json`` names a format or module the trainer does not read.
    """
    if not storage.is_local(uri):
        return _describe(_download(uri, local_dir), source=uri)
    return _describe(storage.split_uri(uri)[1], source=uri)


def _download(uri: str, local_dir: Path) -> str:
    fs, remote = storage.split_uri(uri)
    local_dir.mkdir(parents=True, exist_ok=True)
    if fs.isdir(remote):
        fs.get(remote.rstrip("/") + "/", str(local_dir) + "/", recursive=True)
        return str(local_dir)
    files = fs.glob(remote + ".*")
    if not files:
        raise FileNotFoundError(f"base checkpoint {uri} not found")
    for name in files:
        fs.get(name, str(local_dir / Path(name).name))
    return str(local_dir / Path(remote).name)


def _describe(path: str, source: str) -> BaseWeights:
    """Read ``pulled.json`` / ``base_model.json`` of a folder, or take a prefix as init-base form."""
    folder = Path(path)
    if not folder.is_dir():
        if not Path(path + ".index").exists():
            raise FileNotFoundError(f"base checkpoint {source} not found (no {source}.index)")
        return BaseWeights(path, "checkpoint", INIT_BASE_MODULES, source)
    if (folder / PULLED).exists():
        return _from_pulled(folder, json.loads((folder / PULLED).read_text()), source)
    prefix = _latest_checkpoint(folder)
    if prefix is None:
        raise FileNotFoundError(
            f"no checkpoint in base checkpoint folder {source} (no {PULLED}, no 'checkpoint' state file)"
        )
    described = folder / DESCRIPTION
    if described.exists():
        info = json.loads(described.read_text())
        modules = tuple(m.strip() for m in str(info.get("modules", "backbone,decoder")).split(","))
        random = str(info.get("weights", "")).startswith("random")
        return BaseWeights(prefix, "checkpoint", modules, source, random=random, name=info.get("model"))
    return BaseWeights(prefix, "checkpoint", INIT_BASE_MODULES, source)


def _from_pulled(folder: Path, info: dict[str, Any], source: str) -> BaseWeights:
    published = info.get("format")
    if published not in FORMATS:
        raise ValueError(f"{source}/{PULLED}: format {published!r} is not one of {sorted(FORMATS)}")
    modules = info.get("modules") or []
    if isinstance(modules, str):
        modules = [m.strip() for m in modules.split(",")]
    if not modules or any(m not in INIT_BASE_MODULES for m in modules):
        raise ValueError(f"{source}/{PULLED}: modules {modules!r} must be 'backbone' and/or 'decoder'")
    path = folder / str(info.get("checkpoint") or "")
    kind = FORMATS[published]
    if kind == "keras_h5" and not path.is_file():
        raise FileNotFoundError(f"{source}/{PULLED} names {info.get('checkpoint')!r}, which is not there")
    if kind == "checkpoint" and not Path(str(path) + ".index").exists():
        latest = _latest_checkpoint(folder)
        if not info.get("checkpoint") and latest:
            path = Path(latest)
        else:
            raise FileNotFoundError(
                f"{source}/{PULLED} names checkpoint {info.get('checkpoint')!r}, which has no .index there"
            )
    origin = info.get("published") or info.get("source") or source  # the public URI, not the mirror
    random = str(info.get("weights", "")).startswith("random")  # an init-base folder, passed on
    return BaseWeights(str(path), kind, tuple(modules), origin, random=random, name=info.get("name"))


def _latest_checkpoint(folder: Path) -> str | None:
    """``tf.train.latest_checkpoint`` without TensorFlow: staging runs before TensorFlow loads.

    The ``checkpoint`` state file is a text proto whose ``model_checkpoint_path`` is the newest
    prefix, relative to the folder unless absolute.
    """
    state = folder / "checkpoint"
    if not state.exists():
        return None
    match = _STATE_LINE.search(state.read_text())
    if not match:
        return None
    prefix = folder / match.group(1)  # an absolute path replaces the folder
    return str(prefix) if Path(str(prefix) + ".index").exists() else None
