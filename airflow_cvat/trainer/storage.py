"""Object storage for the trainer: file:// and s3:// URIs through fsspec, with local staging.

Why staging: TensorFlow's file system cannot read s3:// without tensorflow-io, and TFRecord
readers, checkpoint writers and the SavedModel exporter all want paths. So every run works in a
local directory that mirrors ``--output``: for file:// URIs that directory *is* the output (no
copies); for s3:// it is a scratch copy, pulled before a stage and pushed after it. Credentials
come from the standard AWS environment variables; the endpoint from ``AWS_ENDPOINT_URL``
(MinIO, Ceph, moto), which s3fs does not read by itself.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import fsspec


def split_uri(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(file system, path inside it) for a URI; a bare path means the local file system."""
    parsed = urlparse(uri)
    scheme = parsed.scheme or "file"
    if scheme == "file":
        return fsspec.filesystem("file"), os.path.abspath(parsed.path if parsed.scheme else uri)
    if scheme in ("s3", "s3a"):
        options: dict = {}
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            options["client_kwargs"] = {"endpoint_url": endpoint}
        return fsspec.filesystem("s3", **options), f"{parsed.netloc}{parsed.path}".rstrip("/")
    raise ValueError(f"unsupported storage URI {uri!r}; use file:///path or s3://bucket/prefix")


def is_local(uri: str) -> bool:
    return (urlparse(uri).scheme or "file") == "file"


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def exists(uri: str) -> bool:
    fs, path = split_uri(uri)
    return fs.exists(path)


def read_bytes(uri: str) -> bytes:
    fs, path = split_uri(uri)
    with fs.open(path, "rb") as handle:
        return handle.read()


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_text(uri: str, text: str) -> None:
    """Write a small file; local writes go through a rename so readers never see half a file."""
    fs, path = split_uri(uri)
    if is_local(uri):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
        return
    with fs.open(path, "wb") as handle:
        handle.write(text.encode("utf-8"))


def get_file(uri: str, local_path: str | Path) -> Path:
    """Copy one object to ``local_path`` (a no-op copy for local files)."""
    fs, path = split_uri(uri)
    local_path = Path(local_path)
    local_path.parent.mkdir(parents=True, exist_ok=True)
    fs.get(path, str(local_path))
    return local_path


class Workspace:
    """The local mirror of one output URI (see the module docstring for why it exists)."""

    def __init__(self, output_uri: str, scratch: str | None = None) -> None:
        self.uri = output_uri.rstrip("/")
        if is_local(output_uri):
            self.local = Path(split_uri(output_uri)[1])
            self._owned = False
        else:
            self.local = Path(scratch or tempfile.mkdtemp(prefix="airflow-cvat-"))
            self._owned = scratch is None
        self.local.mkdir(parents=True, exist_ok=True)

    def uri_of(self, *parts: str) -> str:
        return join(self.uri, *parts)

    def path(self, *parts: str) -> Path:
        return self.local.joinpath(*parts)

    def exists(self, *parts: str) -> bool:
        return self.path(*parts).exists() if is_local(self.uri) else exists(self.uri_of(*parts))

    def pull(self, *parts: str) -> Path:
        """Bring ``parts`` (file or folder) from the output to the local mirror, if it exists there."""
        target = self.path(*parts)
        if is_local(self.uri):
            return target
        fs, remote = split_uri(self.uri_of(*parts))
        if fs.exists(remote):
            if fs.isdir(remote):
                target.mkdir(parents=True, exist_ok=True)
                fs.get(remote.rstrip("/") + "/", str(target) + "/", recursive=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                fs.get(remote, str(target))
        return target

    def push(self, *parts: str) -> None:
        """Upload ``parts`` (file or folder) of the local mirror to the output."""
        if is_local(self.uri):
            return
        source = self.path(*parts)
        fs, remote = split_uri(self.uri_of(*parts))
        if source.is_dir():
            fs.put(str(source) + "/", remote.rstrip("/") + "/", recursive=True)
        elif source.exists():
            fs.put(str(source), remote)

    def write_text(self, text: str, *parts: str) -> None:
        """Write a small file locally and to the output (markers, metrics, results)."""
        write_text(str(self.path(*parts)), text)
        self.push(*parts)

    def cleanup(self) -> None:
        if self._owned:
            shutil.rmtree(self.local, ignore_errors=True)
