"""BaseModelPullOperator: a catalogue model's base checkpoint, copied once into the artifact root.

Why a step of its own: training pods must not fetch weights from the internet on every run
(slow, flaky, and impossible on clusters without egress), and a retried training must start
from the same bytes. So the weights are pulled once into ``{root}/base_models/{name}/``,
verified, and marked complete; every later run finds the marker and copies nothing.

How a catalogue ``checkpoint`` URI maps to files (``gs://b/p`` is read as
``https://storage.googleapis.com/b/p``, the public Google Cloud Storage endpoint):

``…/name.tar``, ``.tar.gz``, ``.tgz``
    An archive (how the Model Garden publishes checkpoints). Streamed and extracted in one
    pass; regular files only, each under its base name (folders inside are flattened). The
    sha256, when given, is that of the archive.
``…/folder/`` (trailing slash)
    Every file directly in that folder (s3:// and file://, which can be listed).
``…/ckpt-1`` (anything else)
    A ``tf.train.Checkpoint`` prefix: ``ckpt-1.index`` and its ``ckpt-1.data-*`` shards (listed
    on s3:// and file://; over https, which cannot be listed, ``.index`` and
    ``.data-00000-of-00001``).

A catalogue entry may pin the files and checksums in ``options``: ``"files": [names]`` (relative
to the URI's folder; needed for multi-shard checkpoints over https) and ``"sha256"``: a hex
string for an archive, or ``{file name: hex}`` for files. Without a sha256 a copy is verified by
its size (Content-Length over https, the object's size on s3/file).

The pulled folder always holds a ``checkpoint`` state file (written when the source had none),
so ``tf.train.latest_checkpoint(folder)`` and the Model Garden's ``init_checkpoint`` accept the
folder itself. The operator returns that folder's URI (XCom), e.g.
``s3://bucket/cvat/base_models/ssd-mobilenet-v2-coco``: pass it as ``--base-checkpoint``.

When the catalogue gives no ``checkpoint``, the folder is expected to be filled already
(``python -m airflow_cvat.trainer init-base --model NAME --output URI`` does that offline); the
operator checks it holds a checkpoint and returns it.
"""

from __future__ import annotations

import posixpath
import re
import tarfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from airflow.sdk import BaseHook, BaseOperator, ObjectStoragePath
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_cvat.catalog import CatalogError, ModelSpec, get_model, load_catalog
from airflow_cvat.storage import (
    CHUNK_SIZE,
    COMPLETE_MARKER,
    ChunkReader,
    CopyResult,
    IntegrityError,
    check,
    files_match,
    iter_chunks,
    plain_uri,
    read_marker,
    remove_marker,
    write_marker,
    write_stream,
)

if TYPE_CHECKING:
    import requests
    from airflow.sdk import Context

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
STATE_FILE = "checkpoint"
"""tf.train's checkpoint state file: names the newest prefix in a folder."""
GCS_HTTPS = "https://storage.googleapis.com"


class SourceUnreachable(AirflowException):
    """The weights could not be read where the catalogue says they are."""


@dataclass(frozen=True)
class SourceFile:
    """One file to copy: where it is read from, the name it gets, its sha256 if known."""

    uri: str
    name: str
    sha256: str | None = None


def to_readable_uri(uri: str) -> str:
    """``gs://bucket/key`` -> the public GCS https URL; other URIs unchanged."""
    parsed = urlparse(uri)
    if parsed.scheme == "gs":
        return f"{GCS_HTTPS}/{parsed.netloc}{parsed.path}"
    return uri


def is_http(uri: str) -> bool:
    return urlparse(uri).scheme in ("http", "https")


def is_archive(uri: str) -> bool:
    return urlparse(uri).path.lower().endswith(ARCHIVE_SUFFIXES)


class BaseModelPullOperator(BaseOperator):
    """Copy a catalogue model's base checkpoint into ``{root}/base_models/{name}/`` once, verified.

    :param model: catalogue name (a seed model or one from ``catalog_file``).
    :param root: the artifact root URI (``s3://bucket/prefix`` or ``file:///path``).
    :param catalog_file: a JSON/YAML catalogue file with the deployment's own entries.
    :param storage_conn_id: Airflow connection for the artifact root (e.g. an AWS connection).
    :param source_conn_id: connection for reading the weights: an AWS connection for s3:// sources;
        for https, login+password (basic auth), or password alone (a Bearer token).
    :param timeout: seconds without data before an https download is abandoned.
    :return: the URI of the pulled checkpoint folder (XCom), see the module docstring.
    """

    template_fields: Sequence[str] = ("model", "root", "catalog_file")
    ui_color = "#f0e6fb"

    def __init__(
        self,
        *,
        model: str,
        root: str,
        catalog_file: str | None = None,
        storage_conn_id: str | None = None,
        source_conn_id: str | None = None,
        timeout: float = 60,
        chunk_size: int = CHUNK_SIZE,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model = model
        self.root = root
        self.catalog_file = catalog_file
        self.storage_conn_id = storage_conn_id
        self.source_conn_id = source_conn_id
        self.timeout = timeout
        self.chunk_size = chunk_size

    # -- entry point --------------------------------------------------------------------------

    def execute(self, context: Context) -> str:
        spec = self._resolve()
        dest = ObjectStoragePath(self.root, conn_id=self.storage_conn_id) / "base_models" / spec.name
        if spec.checkpoint is None:
            return self._prefilled(spec, dest)
        source = to_readable_uri(spec.checkpoint)
        if self._is_cached(dest, source):
            self.log.info("Base model %s already pulled into %s; nothing to copy", spec.name, dest)
            return plain_uri(dest)
        remove_marker(dest)  # a different source version, or a broken copy: no longer complete
        self.log.info("Pulling base model %s from %s into %s", spec.name, source, dest)
        files = self._pull(spec, source, dest)
        files.update(self._ensure_state_file(dest, files))
        write_marker(dest, {"model": spec.name, "source": source, "files": files})
        self.log.info("Pulled %d file(s), %d bytes", len(files), sum(f["size"] for f in files.values()))
        return plain_uri(dest)

    def _resolve(self) -> ModelSpec:
        """The catalogue entry; an unknown name fails at once (retrying cannot help)."""
        try:
            return get_model(self.model, load_catalog(self.catalog_file))
        except CatalogError as error:
            raise AirflowFailException(str(error)) from None

    def _where(self, spec: ModelSpec) -> str:
        origin = f"catalogue file {self.catalog_file}" if self.catalog_file else "the built-in catalogue"
        return f"model {spec.name!r} (from {origin})"

    # -- cache --------------------------------------------------------------------------------

    def _is_cached(self, dest: ObjectStoragePath, source: str) -> bool:
        """Complete, from the same source, and every recorded file still has its size."""
        marker = read_marker(dest)
        return bool(marker and marker.get("source") == source and files_match(dest, marker.get("files", {})))

    def _prefilled(self, spec: ModelSpec, dest: ObjectStoragePath) -> str:
        """No source in the catalogue: the folder must already hold a checkpoint (init-base)."""
        if any(name.endswith(".index") for name in _list_names(dest)):
            self.log.info("Base model %s has no remote source; using %s", spec.name, dest)
            return plain_uri(dest)
        raise AirflowFailException(
            f"{self._where(spec)} names no checkpoint URI and {dest} holds no checkpoint (*.index). "
            f"Fill it with `python -m airflow_cvat.trainer init-base --model {spec.name} --output {dest}`, "
            "or set 'checkpoint' for this model in a catalogue file"
        )

    # -- copying ------------------------------------------------------------------------------

    def _pull(self, spec: ModelSpec, source: str, dest: ObjectStoragePath) -> dict[str, dict[str, Any]]:
        sha256 = spec.options.get("sha256")
        try:
            if is_archive(source):
                if sha256 is not None and not isinstance(sha256, str):
                    raise AirflowFailException(
                        f"{self._where(spec)}: options.sha256 of an archive is one hex string"
                    )
                return self._pull_archive(source, dest, sha256)
            if sha256 is not None and not isinstance(sha256, dict):
                raise AirflowFailException(
                    f"{self._where(spec)}: options.sha256 of a checkpoint is a mapping {{file name: hex}}"
                )
            files = self._plan(spec, source, sha256 or {})
            return {f.name: self._pull_file(f, dest) for f in files}
        except IntegrityError as error:
            raise AirflowException(
                f"{self._where(spec)}: refused a copy that does not verify: {error}"
            ) from None
        except SourceUnreachable as error:
            raise SourceUnreachable(f"{self._where(spec)}: {error}") from None

    def _plan(self, spec: ModelSpec, source: str, sha256: dict[str, str]) -> list[SourceFile]:
        """The files of a folder or checkpoint prefix (see the module docstring)."""
        if source.endswith("/"):
            folder, stem = source.rstrip("/"), ""
        else:
            folder, _, stem = source.rpartition("/")
        names = spec.options.get("files")
        if names is None:
            names = self._list_source(source, folder, stem)
        return [SourceFile(f"{folder}/{name}", posixpath.basename(name), sha256.get(name)) for name in names]

    def _list_source(self, source: str, folder: str, stem: str) -> list[str]:
        if is_http(source):
            if not stem:
                raise AirflowFailException(
                    f"cannot list the https folder {source}; point the catalogue at an archive or a "
                    "checkpoint prefix, or list its files in options.files"
                )
            return [f"{stem}.index", f"{stem}.data-00000-of-00001"]
        try:
            names = _list_names(ObjectStoragePath(folder + "/", conn_id=self.source_conn_id))
        except Exception as error:
            raise SourceUnreachable(f"cannot list {folder}/: {type(error).__name__}: {error}") from None
        if stem:
            pattern = re.compile(rf"^{re.escape(stem)}\.(index|data-\d+-of-\d+)$")
            names = [n for n in names if pattern.match(n)]
            if not any(n.endswith(".index") for n in names):
                raise SourceUnreachable(
                    f"no checkpoint at {source}: looked for {folder}/{stem}.index and .data-*"
                )
        elif not names:
            raise SourceUnreachable(f"no files in {source}")
        return sorted(names)

    def _pull_file(self, file: SourceFile, dest: ObjectStoragePath) -> dict[str, Any]:
        with self._open(file.uri) as (chunks, size):
            result = write_stream(chunks, dest / file.name, expected_size=size, expected_sha256=file.sha256)
        return {"size": result.size, "sha256": result.sha256}

    def _pull_archive(
        self, source: str, dest: ObjectStoragePath, sha256: str | None
    ) -> dict[str, dict[str, Any]]:
        """Extract while downloading; the archive's own size/sha256 are checked at the end."""
        files: dict[str, dict[str, Any]] = {}
        with self._open(source) as (chunks, size):
            reader = ChunkReader(chunks)
            try:
                with tarfile.open(fileobj=reader, mode="r|*") as archive:  # type: ignore[call-overload]
                    for member in archive:
                        name = posixpath.basename(member.name)
                        handle = archive.extractfile(member) if member.isfile() else None
                        if handle is None or name in ("", ".", "..", COMPLETE_MARKER):
                            continue
                        result = write_stream(iter_chunks(handle, self.chunk_size), dest / name)
                        files[name] = {"size": result.size, "sha256": result.sha256}
                reader.drain()
            except tarfile.TarError as error:
                raise IntegrityError(f"{source} is not a readable tar archive: {error}") from None
            archive_copy = CopyResult(size=reader.size, sha256=reader.sha256)
            check(source, archive_copy, expected_size=size, expected_sha256=sha256)
        if not files:
            raise IntegrityError(f"{source} holds no files")
        return files

    def _ensure_state_file(self, dest: ObjectStoragePath, files: dict[str, dict]) -> dict[str, dict]:
        """Write ``checkpoint`` naming the newest prefix when the source had none."""
        if STATE_FILE in files:
            return {}
        prefixes = sorted((n[: -len(".index")] for n in files if n.endswith(".index")), key=_step_of)
        if not prefixes:
            raise AirflowFailException(
                f"the pulled files {sorted(files)} hold no TensorFlow checkpoint (*.index)"
            )
        body = f'model_checkpoint_path: "{prefixes[-1]}"\nall_model_checkpoint_paths: "{prefixes[-1]}"\n'
        (dest / STATE_FILE).write_text(body)
        return {STATE_FILE: {"size": len(body.encode()), "sha256": None}}

    # -- sources ------------------------------------------------------------------------------

    @contextmanager
    def _open(self, uri: str) -> Iterator[tuple[Iterator[bytes], int | None]]:
        """(chunks, size if known) of one source object; errors say where we looked."""
        if is_http(uri):
            with self._http_get(uri) as response:
                size = response.headers.get("Content-Length")
                yield _http_chunks(response, uri, self.chunk_size), (int(size) if size else None)
            return
        path = ObjectStoragePath(uri, conn_id=self.source_conn_id)
        try:
            size = path.stat().st_size
            handle = path.open("rb", block_size=self.chunk_size)
        except Exception as error:
            raise SourceUnreachable(f"cannot read {uri}: {type(error).__name__}: {error}") from None
        with handle:
            yield iter_chunks(handle, self.chunk_size), size

    @contextmanager
    def _http_get(self, url: str) -> Iterator[requests.Response]:
        import requests  # only the https path needs it

        try:
            response = requests.get(url, stream=True, timeout=self.timeout, **self._http_auth())
        except requests.RequestException as error:
            raise SourceUnreachable(f"cannot reach {url}: {type(error).__name__}: {error}") from None
        with response:
            if response.status_code == 404:
                raise AirflowFailException(f"weights not found: {url} answered 404")
            if response.status_code >= 400:
                raise SourceUnreachable(f"{url} answered HTTP {response.status_code} {response.reason}")
            yield response

    def _http_auth(self) -> dict[str, Any]:
        if not self.source_conn_id:
            return {}
        conn = BaseHook.get_connection(self.source_conn_id)
        if conn.login:
            return {"auth": (conn.login, conn.password or "")}
        if conn.password:
            return {"headers": {"Authorization": f"Bearer {conn.password}"}}
        return {}


def _http_chunks(response: requests.Response, url: str, chunk_size: int) -> Iterator[bytes]:
    """Body chunks; a connection cut mid-stream becomes SourceUnreachable naming the URL."""
    import requests

    try:
        yield from response.iter_content(chunk_size)
    except requests.RequestException as error:
        raise SourceUnreachable(f"download of {url} was cut off: {type(error).__name__}: {error}") from None


def _list_names(folder: ObjectStoragePath) -> list[str]:
    """Names of the files directly in ``folder`` (none when it does not exist)."""
    if not folder.exists():
        return []
    return [child.name for child in folder.iterdir() if child.is_file()]


def _step_of(prefix: str) -> tuple[int, str]:
    match = re.search(r"(\d+)$", prefix)
    return (int(match.group(1)) if match else -1, prefix)
