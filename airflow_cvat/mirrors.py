"""Where published weights are read from: public URLs, rewritten to a deployment's mirror.

Why: the catalogue names weights where they are *published* (``gs://tf_model_garden/...``,
``https://storage.googleapis.com/tensorflow/keras-applications/...``), but training clusters are
often offline. A deployment copies those files once into its own bucket or folder, at the same
paths, and maps the public prefix onto it::

    {"https://storage.googleapis.com/": "s3://internal-bucket/mirror/"}

so ``gs://tf_model_garden/vision/retinanet/retinanet-resnet50fpn.tar.gz`` is read from
``s3://internal-bucket/mirror/tf_model_garden/vision/retinanet/retinanet-resnet50fpn.tar.gz``.
``gs://bucket/key`` is first rewritten to ``https://storage.googleapis.com/bucket/key`` (the
public endpoint of a public object), so one mapping covers both spellings. The longest matching
prefix wins, so one file or folder can be mapped apart from the rest.

The setting comes from (the first that is set): the pull operator's ``mirrors`` argument, the
``"mirrors"`` key of the deployment settings Variable ``cvat_retrain``, the environment variable
``CVAT_WEIGHTS_MIRRORS`` (the same JSON). Standard library only: the trainer may import it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

GCS_HTTPS = "https://storage.googleapis.com/"
ENV_VAR = "CVAT_WEIGHTS_MIRRORS"
SETTINGS_KEY = "mirrors"
"""The key of the ``cvat_retrain`` Variable (deployment settings) that holds the mapping."""
SCHEMES = ("https", "http", "s3", "file", "gs")
EXAMPLE = '{"https://storage.googleapis.com/": "s3://internal-bucket/mirror/"}'


class MirrorError(ValueError):
    """The mirror setting is malformed; the message says where it came from and the form."""


def public_uri(uri: str) -> str:
    """``gs://bucket/key`` -> ``https://storage.googleapis.com/bucket/key``; others unchanged."""
    if uri.startswith("gs://"):
        return GCS_HTTPS + uri[len("gs://") :]
    return uri


def parse_mirrors(value: str | Mapping[str, Any] | None, where: str) -> dict[str, str]:
    """Validate a mirror setting (a JSON object or a mapping) into ``{public prefix: mirror}``.

    ``where`` names the setting in errors (e.g. "the cvat_retrain Variable's 'mirrors'").
    """
    if value is None or value == "" or value == {}:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise MirrorError(f"{where} is not valid JSON ({error}); expected e.g. {EXAMPLE}") from None
    if not isinstance(value, Mapping):
        raise MirrorError(f"{where} must map public URL prefixes to mirrors, e.g. {EXAMPLE}")
    mirrors: dict[str, str] = {}
    for prefix, target in value.items():
        if not isinstance(prefix, str) or not isinstance(target, str) or not prefix or not target:
            raise MirrorError(
                f"{where}: {prefix!r} -> {target!r} is not a pair of URI prefixes, e.g. {EXAMPLE}"
            )
        for uri in (prefix, target):
            if uri.partition("://")[0] not in SCHEMES or "://" not in uri:
                raise MirrorError(f"{where}: {uri!r} must start with one of {[s + '://' for s in SCHEMES]}")
        if prefix.endswith("/") != target.endswith("/"):
            raise MirrorError(
                f"{where}: {prefix!r} -> {target!r}: end both with '/' or neither, "
                "or the paths after them would run together"
            )
        mirrors[public_uri(prefix)] = public_uri(target)
    return mirrors


def mirrored(uri: str, mirrors: Mapping[str, str]) -> str:
    """The URI to read ``uri`` from: its public form, with the longest matching prefix mapped."""
    uri = public_uri(uri)
    matches = [prefix for prefix in mirrors if uri.startswith(prefix)]
    if not matches:
        return uri
    prefix = max(matches, key=len)
    return mirrors[prefix] + uri[len(prefix) :]
