"""The pull of :class:`~airflow_cvat.operators.base_model.BaseModelPullOperator`: what to copy,
the cache, the copy and its verification (see that module's docstring for the formats).

Imported when the task runs, not when the DAG is parsed.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from airflow.sdk import BaseHook, ObjectStoragePath
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_cvat import mirrors as mirror_setting
from airflow_cvat.catalog import PULLED_MARKER, CatalogError, ModelSpec, get_model, load_catalog
from airflow_cvat.operators.base_model import (
    INIT_BASE_DESCRIPTION,
    STATE_FILE,
    SourceUnreachable,
    is_archive,
    is_http,
)
from airflow_cvat.operators.config import SETTINGS_VARIABLE
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

    from airflow_cvat.operators.base_model import BaseModelPullOperator

NOT_COPIED = {PULLED_MARKER, COMPLETE_MARKER, INIT_BASE_DESCRIPTION, STATE_FILE}
"""Names never taken from a source: markers and descriptions are this folder's own."""


@dataclass(frozen=True)
class SourceFile:
    """One file to copy: where it is read from, the name it gets, its expected hashes if known."""

    uri: str
    name: str
    sha256: str | None = None
    md5: str | None = None


@dataclass(frozen=True)
class Source:
    """What to pull for one model, resolved from its catalogue entry and the mirror setting."""

    published: str
    """The URI the catalogue names (the cache key)."""
    uri: str
    """Where it is read from: the public https form of ``published``, mirrored."""
    format: str
    modules: tuple[str, ...]
    sha256: str | dict[str, str] | None = None
    md5: str | None = None
    checkpoint: str | None = None
    files: tuple[str, ...] | None = None
    details: dict[str, Any] = field(default_factory=dict)


class BaseModelPull:
    """One pull, with the operator's rendered fields (and its log)."""

    def __init__(self, operator: BaseModelPullOperator) -> None:
        self.log = operator.log
        self.model = operator.model
        self.root = operator.root
        self.catalog_file = operator.catalog_file
        self.storage_conn_id = operator.storage_conn_id
        self.source_conn_id = operator.source_conn_id
        self.mirrors = operator.mirrors
        self.timeout = operator.timeout
        self.chunk_size = operator.chunk_size or CHUNK_SIZE

    # -- the pull -----------------------------------------------------------------------------

    def run(self) -> str:
        spec = self._resolve()
        dest = ObjectStoragePath(self.root, conn_id=self.storage_conn_id) / "base_models" / spec.name
        if not spec.checkpoint and (spec.pretrained is None or (dest / INIT_BASE_DESCRIPTION).exists()):
            return self._prefilled(spec, dest)
        source = self._source(spec)
        if self._is_cached(dest, source):
            self.log.info("Base model %s already pulled into %s; nothing to copy", spec.name, dest)
            return plain_uri(dest)
        self._clear(dest)  # a different version, or a broken copy: start again from nothing
        self.log.info(
            "Pulling base model %s from %s (%s) into %s", spec.name, source.uri, source.format, dest
        )
        started = time.monotonic()
        files, whole = self._pull(spec, source, dest)
        checkpoint = self._checkpoint_name(spec, source, files)
        if source.format != "keras_h5":
            files[STATE_FILE] = self._write_state_file(dest, checkpoint)
        copied = whole.size if whole else sum(f["size"] for n, f in files.items() if n != STATE_FILE)
        payload = {
            "name": spec.name,
            "source": source.uri,
            "published": source.published,
            "format": source.format,
            "modules": list(source.modules),
            "checkpoint": checkpoint,
            "sha256": whole.sha256 if whole else None,
            "md5": whole.md5 if whole else None,
            "bytes": copied,
            "files": files,
            "weights": self._weights_label(source),
            **source.details,
        }
        write_marker(dest, payload, PULLED_MARKER)
        self.log.info(
            "Pulled %s: %d file(s), %.1f MB in %.1f s; checkpoint %s, modules %s",
            spec.name, len(files), copied / 1e6, time.monotonic() - started, checkpoint,
            ",".join(source.modules),
        )  # fmt: skip
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

    # -- what to pull -------------------------------------------------------------------------

    def _source(self, spec: ModelSpec) -> Source:
        """The entry's own ``checkpoint`` if any, else its published ``pretrained`` weights."""
        if spec.checkpoint:
            return self._user_source(spec)
        pretrained = spec.pretrained
        assert pretrained is not None  # execute() took the prefilled path otherwise
        details = {
            "input_size": pretrained.input_size,
            "config": pretrained.config,
            "dataset": pretrained.dataset,
        }
        return Source(
            published=pretrained.uri,
            uri=self._mirrored(pretrained.uri),
            format=pretrained.format,
            modules=pretrained.modules,
            sha256=pretrained.sha256,
            md5=pretrained.md5,
            checkpoint=pretrained.checkpoint,
            details={k: v for k, v in details.items() if v},
        )

    def _user_source(self, spec: ModelSpec) -> Source:
        """A deployment's own checkpoint URI: an archive, a folder or a prefix (module docstring)."""
        uri = str(spec.checkpoint)
        sha256 = spec.options.get("sha256")
        archive = is_archive(uri)
        if archive and sha256 is not None and not isinstance(sha256, str):
            raise AirflowFailException(f"{self._where(spec)}: options.sha256 of an archive is one hex string")
        if not archive and sha256 is not None and not isinstance(sha256, dict):
            raise AirflowFailException(
                f"{self._where(spec)}: options.sha256 of a checkpoint is a mapping {{file name: hex}}"
            )
        names = spec.options.get("files")
        modules = spec.pretrained.modules if spec.pretrained else ("backbone", "decoder")
        return Source(
            published=uri,
            uri=self._mirrored(uri),
            format="checkpoint_tar" if archive else "checkpoint",
            modules=modules,
            sha256=sha256,
            files=tuple(names) if names is not None else None,
        )

    def _weights_label(self, source: Source) -> str:
        """ "random (init-base)" when a user's checkpoint folder says so (the demo), else "pretrained"."""
        if is_http(source.uri) or is_archive(source.uri) or source.format == "keras_h5":
            return "pretrained"
        folder = source.uri.rstrip("/") if source.uri.endswith("/") else source.uri.rpartition("/")[0]
        try:
            path = ObjectStoragePath(
                f"{folder}/{INIT_BASE_DESCRIPTION}", conn_id=self._source_conn(source.uri)
            )
            description = _read_json(path)
        except Exception:  # a description is optional; the weights were verified already
            description = {}
        weights = str(description.get("weights", ""))
        return "random (init-base)" if weights.startswith("random") else "pretrained"

    def _mirrored(self, uri: str) -> str:
        mirrors, where = self._mirror_setting()
        readable = mirror_setting.mirrored(uri, mirrors)
        if readable != mirror_setting.public_uri(uri):
            self.log.info("Reading %s from its mirror %s (mirror setting: %s)", uri, readable, where)
        return readable

    def _mirror_setting(self) -> tuple[dict[str, str], str]:
        """The first mirror setting that is set: argument, Variable, environment."""
        try:
            if self.mirrors not in (None, "", {}):
                where = "the operator's mirrors argument"
                return mirror_setting.parse_mirrors(self.mirrors, where), where
            settings = _settings_variable()
            if settings.get(mirror_setting.SETTINGS_KEY):
                where = f"the {SETTINGS_VARIABLE} Variable's {mirror_setting.SETTINGS_KEY!r}"
                return mirror_setting.parse_mirrors(settings[mirror_setting.SETTINGS_KEY], where), where
            where = f"the environment variable {mirror_setting.ENV_VAR}"
            return mirror_setting.parse_mirrors(os.environ.get(mirror_setting.ENV_VAR), where), where
        except mirror_setting.MirrorError as error:
            raise AirflowFailException(str(error)) from None

    # -- cache --------------------------------------------------------------------------------

    def _is_cached(self, dest: ObjectStoragePath, source: Source) -> bool:
        """Complete, from the same published file (same hashes), every file still its size."""
        marker = read_marker(dest, PULLED_MARKER)
        if not marker or marker.get("published") != source.published or marker.get("format") != source.format:
            return False
        for name in ("sha256", "md5"):
            expected = getattr(source, name)
            if isinstance(expected, str) and marker.get(name) != expected.lower():
                return False
        return files_match(dest, marker.get("files", {}))

    def _clear(self, dest: ObjectStoragePath) -> None:
        """Withdraw the marker first, then remove what an earlier or broken pull left."""
        remove_marker(dest, PULLED_MARKER)
        remove_marker(dest, COMPLETE_MARKER)  # the marker of earlier versions of this operator
        for name in _list_names(dest):
            (dest / name).unlink()

    def _prefilled(self, spec: ModelSpec, dest: ObjectStoragePath) -> str:
        """No source, or a folder ``init-base`` filled: use the checkpoint that is there.

        Why init-base's folder wins over the published weights (not over an entry's own
        ``checkpoint``): the offline demo and the tests fill it on purpose; the log says so.
        """
        published = spec.pretrained.uri if spec.pretrained else None
        names = [n for n in _list_names(dest) if n not in (PULLED_MARKER, COMPLETE_MARKER)]
        prefixes = _prefixes(names)
        if not prefixes and published:
            raise AirflowFailException(
                f"{dest} holds {INIT_BASE_DESCRIPTION} but no checkpoint (*.index): delete the folder "
                f"to pull the published weights of {self._where(spec)}, or run init-base again"
            )
        if not prefixes:
            raise AirflowFailException(
                f"{self._where(spec)} names no weights and {dest} holds no checkpoint (*.index). "
                "Fill it with `python -m airflow_cvat.trainer init-base "
                f"--model {spec.name} --output {dest}` (random weights), "
                "or set 'pretrained' or 'checkpoint' for this model in a catalogue file"
            )
        description = _read_json(dest / INIT_BASE_DESCRIPTION)
        random = str(description.get("weights", "")).startswith("random")
        if published:
            self.log.warning(
                "%s names published weights (%s), but %s was filled by init-base: using it as it is%s. "
                "Delete the folder to pull the published weights.",
                self._where(spec), published, dest, " (RANDOM weights)" if random else "",
            )  # fmt: skip
        checkpoint = str(description.get("checkpoint") or prefixes[-1])
        modules = [m.strip() for m in str(description.get("modules") or "backbone,decoder").split(",")]
        marker = read_marker(dest, PULLED_MARKER)
        if not (
            marker and marker.get("checkpoint") == checkpoint and marker.get("source") == plain_uri(dest)
        ):
            files = {name: {"size": (dest / name).stat().st_size, "sha256": None} for name in names}
            payload = {
                "name": spec.name,
                "source": plain_uri(dest),
                "published": None,
                "format": "checkpoint",
                "modules": modules,
                "checkpoint": checkpoint,
                "sha256": None,
                "md5": None,
                "bytes": sum(f["size"] for f in files.values()),
                "files": files,
                "weights": "random (init-base)" if random else "prefilled",
            }
            if STATE_FILE not in names:
                payload["files"][STATE_FILE] = self._write_state_file(dest, checkpoint)
            write_marker(dest, payload, PULLED_MARKER)
        self.log.info("Base model %s: using the checkpoint %s already in %s", spec.name, checkpoint, dest)
        return plain_uri(dest)

    # -- copying ------------------------------------------------------------------------------

    def _pull(
        self, spec: ModelSpec, source: Source, dest: ObjectStoragePath
    ) -> tuple[dict[str, dict[str, Any]], CopyResult | None]:
        """Copy the files; for a single published file (tarball, h5) also its own verification."""
        try:
            single_sha256 = source.sha256 if isinstance(source.sha256, str) else None
            if source.format == "checkpoint_tar":
                return self._pull_archive(source.uri, dest, single_sha256, source.md5)
            if source.format == "keras_h5":
                name = posixpath.basename(urlparse(source.uri).path)
                file = SourceFile(source.uri, name, single_sha256, source.md5)
                result = self._pull_file(file, dest)
                return {name: {"size": result.size, "sha256": result.sha256}}, result
            hashes = source.sha256 if isinstance(source.sha256, dict) else {}
            files = self._plan(source, hashes)
            return {f.name: _file_info(self._pull_file(f, dest)) for f in files}, None
        except IntegrityError as error:
            raise AirflowException(
                f"{self._where(spec)}: refused a copy that does not verify: {error}. If this repeats, the "
                f"file at {source.uri} is not the one the catalogue names: replace it (a stale mirror copy?) "
                "or correct the hash in the catalogue"
            ) from None
        except SourceUnreachable as error:
            hint = self._hint(source, unreachable=True)
            raise SourceUnreachable(f"{self._where(spec)}: {error}{hint}") from None
        except AirflowFailException as error:
            raise AirflowFailException(f"{self._where(spec)}: {error}{self._hint(source)}") from None

    def _hint(self, source: Source, unreachable: bool = False) -> str:
        """What to do when the weights cannot be read: mirror them, or fill the mirror."""
        if source.uri != mirror_setting.public_uri(source.published):
            return f" (the mirror of {source.published}: copy the published file there, at the same path)"
        if unreachable and is_http(source.uri):
            return (
                ". No internet on this cluster? Copy the file into your own store and map its prefix with "
                f"'{mirror_setting.SETTINGS_KEY}' in the {SETTINGS_VARIABLE} Variable, "
                f"e.g. {mirror_setting.EXAMPLE}"
            )
        return ""

    def _plan(self, source: Source, sha256: dict[str, str]) -> list[SourceFile]:
        """The files of a folder or checkpoint prefix (see the module docstring)."""
        if source.uri.endswith("/"):
            folder, stem = source.uri.rstrip("/"), ""
        else:
            folder, _, stem = source.uri.rpartition("/")
        names = (
            list(source.files) if source.files is not None else self._list_source(source.uri, folder, stem)
        )
        return [SourceFile(f"{folder}/{name}", posixpath.basename(name), sha256.get(name)) for name in names]

    def _list_source(self, uri: str, folder: str, stem: str) -> list[str]:
        if is_http(uri):
            if not stem:
                raise AirflowFailException(
                    f"cannot list the https folder {uri}; point the catalogue at an archive or a "
                    "checkpoint prefix, or list its files in options.files"
                )
            return [f"{stem}.index", f"{stem}.data-00000-of-00001"]
        try:
            names = _list_names(ObjectStoragePath(folder + "/", conn_id=self._source_conn(uri)))
        except Exception as error:
            raise SourceUnreachable(f"cannot list {folder}/: {type(error).__name__}: {error}") from None
        if stem:
            pattern = re.compile(rf"^{re.escape(stem)}\.(index|data-\d+-of-\d+)$")
            names = [n for n in names if pattern.match(n)]
            if not any(n.endswith(".index") for n in names):
                raise SourceUnreachable(
                    f"no checkpoint at {uri}: looked for {folder}/{stem}.index and .data-*"
                )
        else:
            names = [n for n in names if n not in NOT_COPIED]
            if not names:
                raise SourceUnreachable(f"no files in {uri}")
        return sorted(names)

    def _pull_file(self, file: SourceFile, dest: ObjectStoragePath) -> CopyResult:
        with self._open(file.uri) as (chunks, size):
            return write_stream(
                chunks,
                dest / file.name,
                expected_size=size,
                expected_sha256=file.sha256,
                expected_md5=file.md5,
            )

    def _pull_archive(
        self, uri: str, dest: ObjectStoragePath, sha256: str | None, md5: str | None
    ) -> tuple[dict[str, dict[str, Any]], CopyResult]:
        """Extract while downloading; the archive's own size and hashes are checked at the end."""
        import tarfile  # here, not at the top: the DAG imports this module on every parse

        files: dict[str, dict[str, Any]] = {}
        with self._open(uri) as (chunks, size):
            reader = ChunkReader(chunks)
            try:
                with tarfile.open(fileobj=reader, mode="r|*") as archive:  # type: ignore[call-overload]
                    for member in archive:
                        name = posixpath.basename(member.name)
                        handle = archive.extractfile(member) if member.isfile() else None
                        if handle is None or name in ("", ".", "..") or name in NOT_COPIED:
                            continue
                        if name in files:
                            raise IntegrityError(
                                f"{uri} holds two files named {name!r}; expected one checkpoint"
                            )
                        files[name] = _file_info(
                            write_stream(iter_chunks(handle, self.chunk_size), dest / name)
                        )
                reader.drain()
            except tarfile.TarError as error:
                raise IntegrityError(f"{uri} is not a readable tar archive: {error}") from None
            whole = reader.result()
            check(uri, whole, expected_size=size, expected_sha256=sha256, expected_md5=md5)
        if not files:
            raise IntegrityError(f"{uri} holds no files")
        return files, whole

    def _checkpoint_name(self, spec: ModelSpec, source: Source, files: dict[str, dict]) -> str:
        """The checkpoint prefix (or h5 file) in the folder: the named one, else the newest."""
        if source.format == "keras_h5":
            return next(iter(files))
        prefixes = _prefixes(list(files))
        if source.checkpoint:
            if source.checkpoint not in prefixes:
                raise AirflowFailException(
                    f"{self._where(spec)}: {source.uri} holds no {source.checkpoint}.index (it holds "
                    f"{sorted(files)}): the catalogue's pretrained.checkpoint names another prefix"
                )
            return source.checkpoint
        if not prefixes:
            raise AirflowFailException(
                f"{self._where(spec)}: {source.uri} holds no TensorFlow checkpoint (*.index): {sorted(files)}"
            )
        return prefixes[-1]

    def _write_state_file(self, dest: ObjectStoragePath, prefix: str) -> dict[str, Any]:
        """``checkpoint`` naming ``prefix``, so ``tf.train.latest_checkpoint(folder)`` finds it."""
        body = f'model_checkpoint_path: "{prefix}"\nall_model_checkpoint_paths: "{prefix}"\n'
        (dest / STATE_FILE).write_text(body)
        return {"size": len(body.encode()), "sha256": None}

    # -- sources ------------------------------------------------------------------------------

    def _source_conn(self, uri: str) -> str | None:
        """The connection for a non-https source: a mirror is often in the root's own store."""
        return self.source_conn_id or (self.storage_conn_id if urlparse(uri).scheme == "s3" else None)

    @contextmanager
    def _open(self, uri: str) -> Iterator[tuple[Iterator[bytes], int | None]]:
        """(chunks, size if known) of one source object; errors say where we looked."""
        if is_http(uri):
            with self._http_get(uri) as response:
                size = response.headers.get("Content-Length")
                yield _http_chunks(response, uri, self.chunk_size), (int(size) if size else None)
            return
        path = ObjectStoragePath(uri, conn_id=self._source_conn(uri))
        try:
            size = path.stat().st_size
            handle = path.open("rb", block_size=self.chunk_size)
        except FileNotFoundError:
            raise AirflowFailException(f"weights not found: {uri} does not exist") from None
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


def _settings_variable() -> dict[str, Any]:
    """The deployment settings (the ``cvat_retrain`` Variable), or {} when there are none."""
    from airflow.sdk import Variable

    raw = Variable.get(SETTINGS_VARIABLE, default=None)
    if raw in (None, ""):
        return {}
    try:
        data = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError as error:
        raise AirflowFailException(f"the {SETTINGS_VARIABLE} Variable is not valid JSON: {error}") from None
    return data if isinstance(data, dict) else {}


def _http_chunks(response: requests.Response, url: str, chunk_size: int) -> Iterator[bytes]:
    """Body chunks; a connection cut mid-stream becomes SourceUnreachable naming the URL."""
    import requests

    try:
        yield from response.iter_content(chunk_size)
    except requests.RequestException as error:
        raise SourceUnreachable(f"download of {url} was cut off: {type(error).__name__}: {error}") from None


def _file_info(result: CopyResult) -> dict[str, Any]:
    return {"size": result.size, "sha256": result.sha256}


def _list_names(folder: ObjectStoragePath) -> list[str]:
    """Names of the files directly in ``folder`` (none when it does not exist)."""
    if not folder.exists():
        return []
    return [child.name for child in folder.iterdir() if child.is_file()]


def _prefixes(names: list[str]) -> list[str]:
    """Checkpoint prefixes among file names, oldest to newest by their step number."""
    return sorted((n[: -len(".index")] for n in names if n.endswith(".index")), key=_step_of)


def _read_json(path: ObjectStoragePath) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _step_of(prefix: str) -> tuple[int, str]:
    match = re.search(r"(\d+)$", prefix)
    return (int(match.group(1)) if match else -1, prefix)
