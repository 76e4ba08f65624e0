"""Airflow-side object-storage helpers: streamed, verified copies and "complete" markers.

Why these exist: every step that publishes into the artifact root (pulled base models,
published models) has the same two problems. A copy can be cut off half-way (a worker dies, a
connection drops), and object storage has no atomic rename of a folder. So a folder is
published by writing its files first and a small JSON marker *last*: a reader (or a rerun)
trusts a folder only when the marker is there, and a missing marker means "start again". Files
are streamed in chunks so memory stays flat whatever their size, and each copy is checked
against its expected size and, when known, its sha256 before the marker can be written.

Everything works on :class:`airflow.sdk.ObjectStoragePath`, so file://, s3:// and any other
fsspec protocol Airflow reaches behave the same.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from airflow.sdk import ObjectStoragePath

COMPLETE_MARKER = "_COMPLETE.json"
CHUNK_SIZE = 1 << 20


class IntegrityError(OSError):
    """A copy does not match its expected size or sha256; the broken copy has been removed."""


@dataclass(frozen=True)
class CopyResult:
    """What was written: byte count, sha256 and md5 of the bytes (as read from the source).

    md5 because Keras publishes its application weights with md5 hashes only.
    """

    size: int
    sha256: str
    md5: str = ""


def plain_uri(path: ObjectStoragePath) -> str:
    """``s3://bucket/key`` without the ``conn_id@`` Airflow puts in ``str(path)``.

    Why: URIs leave Airflow (XCom, the trainer's command line, emails), and nothing outside
    Airflow understands the connection id.
    """
    return f"{path.protocol}://{path.path}"


def iter_chunks(handle: IO[bytes], chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Chunks of an open binary file until EOF."""
    while chunk := handle.read(chunk_size):
        yield chunk


class ChunkReader:
    """A file-like ``read(n)`` over an iterator of chunks, hashing what passes through.

    Why: ``tarfile`` in stream mode wants a file object, sources give chunk iterators, and the
    archive's checksum must cover exactly the bytes read from the source (one pass, no temp file).
    """

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buffer = b""
        self._hash = hashlib.sha256()
        self._md5 = hashlib.md5(usedforsecurity=False)
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._hash.update(chunk)
            self._md5.update(chunk)
            self.size += len(chunk)
            self._buffer += chunk
        if size < 0:
            data, self._buffer = self._buffer, b""
        else:
            data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def drain(self) -> None:
        """Read to the end so that size and sha256 cover the whole source."""
        while self.read(CHUNK_SIZE):
            pass

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    @property
    def md5(self) -> str:
        return self._md5.hexdigest()

    def result(self) -> CopyResult:
        return CopyResult(size=self.size, sha256=self.sha256, md5=self.md5)


def check(
    what: str,
    result: CopyResult,
    *,
    expected_size: int | None = None,
    expected_sha256: str | None = None,
    expected_md5: str | None = None,
) -> None:
    """Raise IntegrityError when ``result`` differs from what was expected (naming both)."""
    if expected_size is not None and result.size != expected_size:
        raise IntegrityError(f"{what}: got {result.size} bytes, expected {expected_size} (truncated copy?)")
    if expected_sha256 is not None and result.sha256 != expected_sha256.lower():
        raise IntegrityError(f"{what}: sha256 is {result.sha256}, expected {expected_sha256.lower()}")
    if expected_md5 is not None and result.md5 != expected_md5.lower():
        raise IntegrityError(f"{what}: md5 is {result.md5}, expected {expected_md5.lower()}")


def write_stream(
    chunks: Iterable[bytes],
    dest: ObjectStoragePath,
    *,
    expected_size: int | None = None,
    expected_sha256: str | None = None,
    expected_md5: str | None = None,
    on_chunk: Callable[[bytes], None] | None = None,
) -> CopyResult:
    """Stream ``chunks`` into ``dest``, verify them, and remove ``dest`` again if they are wrong.

    The size is also checked on the written object, which catches a store that silently
    truncated the upload. ``on_chunk`` sees every chunk (progress, tests).
    """
    digest, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    size = 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with dest.open("wb") as out:
            for chunk in chunks:
                if on_chunk is not None:
                    on_chunk(chunk)
                digest.update(chunk)
                md5.update(chunk)
                size += len(chunk)
                out.write(chunk)
        result = CopyResult(size=size, sha256=digest.hexdigest(), md5=md5.hexdigest())
        check(
            str(dest),
            result,
            expected_size=expected_size,
            expected_sha256=expected_sha256,
            expected_md5=expected_md5,
        )
        written = dest.stat().st_size
        if written != size:
            raise IntegrityError(f"{dest}: storage holds {written} bytes, {size} were written")
    except Exception:  # a wrong copy or a cut-off source: leave no partial file behind
        _remove_quietly(dest)
        raise
    return result


def copy_object(
    source: ObjectStoragePath,
    dest: ObjectStoragePath,
    *,
    expected_sha256: str | None = None,
    chunk_size: int = CHUNK_SIZE,
    on_chunk: Callable[[bytes], None] | None = None,
) -> CopyResult:
    """Copy one object between any two stores, streamed, verified by size and sha256 if given."""
    expected_size = source.stat().st_size
    with source.open("rb", block_size=chunk_size) as handle:
        return write_stream(
            iter_chunks(handle, chunk_size),
            dest,
            expected_size=expected_size,
            expected_sha256=expected_sha256,
            on_chunk=on_chunk,
        )


def sha256_of(path: ObjectStoragePath, chunk_size: int = CHUNK_SIZE) -> str:
    """sha256 of a stored object, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter_chunks(handle, chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def write_marker(folder: ObjectStoragePath, payload: dict[str, Any], name: str = COMPLETE_MARKER) -> None:
    """Declare ``folder`` complete. Call it last: everything written before it is trusted.

    Local files are written through a rename, so a reader never parses half a marker; an S3
    PUT is atomic by itself.
    """
    body = json.dumps({**payload, "completed_at": datetime.now(UTC).isoformat()}, indent=2, sort_keys=True)
    marker = folder / name
    if marker.protocol in ("file", "local", ""):
        tmp = folder / f".{name}.tmp"
        tmp.write_text(body)
        tmp.rename(marker)
    else:
        marker.write_text(body)


def read_marker(folder: ObjectStoragePath, name: str = COMPLETE_MARKER) -> dict[str, Any] | None:
    """The marker's payload, or None when the folder is not (or not cleanly) complete."""
    marker = folder / name
    try:
        if not marker.exists():
            return None
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def remove_marker(folder: ObjectStoragePath, name: str = COMPLETE_MARKER) -> None:
    """Withdraw completeness before changing a folder's contents (e.g. a new source version)."""
    _remove_quietly(folder / name)


def files_match(folder: ObjectStoragePath, files: dict[str, dict[str, Any]]) -> bool:
    """True when every recorded file is still there with its recorded size (cheap: stat only)."""
    try:
        return all((folder / name).stat().st_size == info["size"] for name, info in files.items())
    except (OSError, KeyError, TypeError):
        return False


def _remove_quietly(path: ObjectStoragePath) -> None:
    try:
        path.unlink()
    except (FileNotFoundError, OSError):
        pass
