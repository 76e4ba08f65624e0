"""BaseModelPullOperator: a catalogue model's pretrained weights, copied once into the artifact root.

Why a step of its own: training pods must not fetch weights from the internet on every run
(slow, flaky, and impossible on clusters without egress), and a retried training must start
from the same bytes. So the weights are pulled once into ``{root}/base_models/{name}/``,
verified, and marked complete with ``pulled.json`` (:data:`airflow_cvat.catalog.PULLED_MARKER`),
written last; every later run finds the marker and copies nothing. The trainer's
``--base-checkpoint`` takes the folder and reads ``pulled.json``.

Where the weights come from, in this order:

1. the entry's ``checkpoint`` URI (a deployment's own weights; it wins over ``pretrained``);
2. the entry's ``pretrained`` source (:class:`airflow_cvat.catalog.Pretrained`): the published
   weights every built-in model names;
3. nothing: the folder must already hold a checkpoint (``python -m airflow_cvat.trainer
   init-base`` writes random weights there, for tests and the offline demo).

A folder ``init-base`` filled (it holds ``base_model.json``) is used as it is even when the
entry names published weights, with a warning that its weights are random: delete the folder
to pull the published ones.

Published URIs are read through the mirror setting (:mod:`airflow_cvat.mirrors`; ``gs://b/p``
is ``https://storage.googleapis.com/b/p``). Formats:

``checkpoint_tar`` (``…/name.tar.gz``, ``.tgz``, ``.tar``)
    Streamed and extracted in one pass; regular files only, each under its base name. The
    sha256/md5, when given, are those of the archive.
``keras_h5`` (``…/name.h5``)
    One file, verified by md5 (what Keras publishes) and/or sha256.
``checkpoint`` (``…/ckpt-1``, or a user's ``…/folder/``)
    ``ckpt-1.index`` and its ``ckpt-1.data-*`` shards (listed on s3:// and file://; over https,
    which cannot be listed, ``.index`` and ``.data-00000-of-00001``). A user entry may pin the
    files and checksums in ``options``: ``"files": [names]`` and ``"sha256"``: a hex string for an
    archive, or ``{file name: hex}``. Without a hash a copy is verified by its size.

A checkpoint folder always gets a ``checkpoint`` state file naming the prefix, so
``tf.train.latest_checkpoint(folder)`` works too. The cache is keyed on the published URI and
its hashes, not on the mirror: moving a mirror does not pull again.
Import cost: the DAG file imports this module on every parse, so it holds the operator's
fields; the pull itself (storage, catalogue, mirrors, http) is
:mod:`airflow_cvat.operators.base_model_pull`, imported when the task runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

if TYPE_CHECKING:
    from airflow.sdk import Context

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
STATE_FILE = "checkpoint"
"""tf.train's checkpoint state file: names the newest prefix in a folder."""
INIT_BASE_DESCRIPTION = "base_model.json"
"""What ``trainer init-base`` writes next to its (random) checkpoint."""


class SourceUnreachable(AirflowException):
    """The weights could not be read where the catalogue (or its mirror) says they are."""


def to_readable_uri(uri: str) -> str:
    """``gs://bucket/key`` -> the public GCS https URL; other URIs unchanged."""
    from airflow_cvat import mirrors

    return mirrors.public_uri(uri)


def is_http(uri: str) -> bool:
    return urlparse(uri).scheme in ("http", "https")


def is_archive(uri: str) -> bool:
    return urlparse(uri).path.lower().endswith(ARCHIVE_SUFFIXES)


class BaseModelPullOperator(BaseOperator):
    """Copy a catalogue model's base weights into ``{root}/base_models/{name}/`` once, verified.

    :param model: catalogue name (a built-in model or one from ``catalog_file``).
    :param root: the artifact root URI (``s3://bucket/prefix`` or ``file:///path``).
    :param catalog_file: a JSON/YAML catalogue file with the deployment's own entries.
    :param storage_conn_id: Airflow connection for the artifact root (e.g. an AWS connection).
    :param source_conn_id: connection for reading the weights: an AWS connection for s3:// sources
        (default: ``storage_conn_id``, for a mirror in the same store); for https, login+password
        (basic auth), or password alone (a Bearer token).
    :param mirrors: ``{public prefix: mirror prefix}`` (a mapping or its JSON). None: the
        ``"mirrors"`` of the ``cvat_retrain`` Variable, else ``CVAT_WEIGHTS_MIRRORS``.
    :param timeout: seconds without data before an https download is abandoned.
    :param chunk_size: bytes read and written at a time (None: 1 MiB, ``storage.CHUNK_SIZE``).
    :return: the URI of the pulled folder (XCom), e.g. ``s3://bucket/cvat/base_models/NAME``:
        pass it as ``--base-checkpoint``.
    """

    template_fields: Sequence[str] = ("model", "root", "catalog_file", "mirrors")
    ui_color = "#f0e6fb"

    def __init__(
        self,
        *,
        model: str,
        root: str,
        catalog_file: str | None = None,
        storage_conn_id: str | None = None,
        source_conn_id: str | None = None,
        mirrors: Mapping[str, str] | str | None = None,
        timeout: float = 60,
        chunk_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model = model
        self.root = root
        self.catalog_file = catalog_file
        self.storage_conn_id = storage_conn_id
        self.source_conn_id = source_conn_id
        self.mirrors = mirrors
        self.timeout = timeout
        self.chunk_size = chunk_size

    def execute(self, context: Context) -> str:
        from airflow_cvat.operators.base_model_pull import BaseModelPull

        return BaseModelPull(self).run()
