"""CVAT deployables for a published model: a nuclio function and a cvat-sdk auto-annotation module.

Why generated and not hand-written per model: the label list (names, ids, shape type) is the
only thing that differs between models of a family, and it must match the label map the
model was trained with exactly, or CVAT maps detections to the wrong labels. The code that runs
inside CVAT is a fixed template (``templates/``), copied as is; only data files and the nuclio
``function.yaml`` are generated. Standard library and PyYAML only (the Airflow side imports this).

Layout written under a version folder (see ``airflow_cvat.operators.convert``)::

    nuclio/function.yaml       CPU variant  (nuctl deploy --path nuclio --file nuclio/function.yaml)
    nuclio/function-gpu.yaml   GPU variant  (nvidia.com/gpu: 1, a GPU base image)
    nuclio/main.py             init_context / handler, as CVAT's own serverless detectors
    nuclio/labels.json         the label spec the handler maps class ids with
    nuclio/saved_model/        a copy of the SavedModel: nuctl builds from this folder alone
    cvat_function.py           cvat-sdk auto-annotation function (reads ../label_map.json, saved_model/)
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

TEMPLATES = "airflow_cvat.deploy.templates"
TENSORFLOW_VERSION = "2.20.0"
CPU_IMAGE = f"tensorflow/tensorflow:{TENSORFLOW_VERSION}"
GPU_IMAGE = f"tensorflow/tensorflow:{TENSORFLOW_VERSION}-gpu"


def label_spec(labels: list[dict[str, Any]], *, masks: bool = False) -> list[dict[str, Any]]:
    """CVAT's detector label spec: ``[{"id", "name", "type"}]`` with the model's class ids."""
    kind = "mask" if masks else "rectangle"
    return [{"id": int(entry["id"]), "name": entry["name"], "type": kind} for entry in labels]


def function_name(model_name: str, version: str) -> str:
    """A nuclio function name: lowercase DNS label (Kubernetes rules), at most 63 characters."""
    slug = re.sub(r"[^a-z0-9-]+", "-", f"cvat-{model_name}-{version}".lower()).strip("-")
    return slug[:63].rstrip("-")


class _Literal(str):
    """A string dumped as a YAML block literal (CVAT's own function.yaml files write spec so)."""


def _literal(dumper: yaml.SafeDumper, value: _Literal) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Literal, _literal)


def function_yaml(
    *,
    name: str,
    display_name: str,
    spec: list[dict[str, Any]],
    gpu: bool,
    description: str = "",
    namespace: str = "cvat",
) -> str:
    """A nuclio function.yaml in the form of CVAT's serverless detectors (CPU or GPU variant)."""
    spec_text = "[\n" + ",\n".join(f"  {json.dumps(entry)}" for entry in spec) + "\n]\n"
    document: dict[str, Any] = {
        "metadata": {
            "name": name + ("-gpu" if gpu else ""),
            "namespace": namespace,
            "annotations": {
                "name": display_name + (" (GPU)" if gpu else ""),
                "type": "detector",
                "framework": "tensorflow",
                "spec": _Literal(spec_text),
            },
        },
        "spec": {
            "description": description or display_name,
            "runtime": "python:3.11",
            "handler": "main:handler",
            "eventTimeout": "30s",
            "build": {
                "image": f"cvat.{name}" + (".gpu" if gpu else ""),
                "baseImage": GPU_IMAGE if gpu else CPU_IMAGE,
                "directives": {
                    "preCopy": [
                        {"kind": "WORKDIR", "value": "/opt/nuclio"},
                        {"kind": "RUN", "value": "pip install --no-cache-dir pillow"},
                    ]
                },
            },
            "triggers": {
                "myHttpTrigger": {
                    "maxWorkers": 1 if gpu else 2,
                    "kind": "http",
                    "workerAvailabilityTimeoutMilliseconds": 10000,
                    "attributes": {"maxRequestBodySize": 33554432},
                }
            },
            "platform": {
                "attributes": {
                    "restartPolicy": {"name": "always", "maximumRetryCount": 3},
                    "mountMode": "volume",
                }
            },
        },
    }
    if gpu:
        document["spec"]["resources"] = {"limits": {"nvidia.com/gpu": 1}}
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=1000)


def template(name: str) -> str:
    return resources.files(TEMPLATES).joinpath(name).read_text(encoding="utf-8")


def write_nuclio(
    folder: Path, *, model_name: str, version: str, labels: list[dict[str, Any]], masks: bool = False
) -> list[str]:
    """Write the nuclio function files (not the SavedModel copy) into ``folder``; return their names."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = label_spec(labels, masks=masks)
    name = function_name(model_name, version)
    display = f"{model_name} {version} (airflow-provider-cvat)"
    files = {
        "function.yaml": function_yaml(name=name, display_name=display, spec=spec, gpu=False),
        "function-gpu.yaml": function_yaml(name=name, display_name=display, spec=spec, gpu=True),
        "main.py": template("nuclio_main.py"),
        "labels.json": json.dumps(spec, indent=2) + "\n",
    }
    for file, text in files.items():
        (folder / file).write_text(text, encoding="utf-8")
    return sorted(files)


def write_cvat_function(folder: Path) -> str:
    """Write ``cvat_function.py`` (reads ``label_map.json`` and ``saved_model/`` beside it)."""
    (folder / "cvat_function.py").write_text(template("cvat_function.py"), encoding="utf-8")
    return "cvat_function.py"
