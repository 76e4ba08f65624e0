"""BaseModelPullOperator: published weights through the mirror setting, user checkpoints, cache, integrity.

The "published" files are served over real HTTP on loopback at the same URL paths as on
storage.googleapis.com, reached through the mirror setting, as an offline cluster would reach
its own copy. The bytes are placeholders: the pull copies and verifies files and never reads
them as TensorFlow would (tests/test_pretrained*.py run real checkpoints through it).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from urllib.parse import urlparse

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_cvat.catalog import BUILTIN_MODELS, PULLED_MARKER, get_model
from airflow_cvat.mirrors import ENV_VAR, GCS_HTTPS, public_uri
from airflow_cvat.operators.base_model import BaseModelPullOperator, SourceUnreachable, to_readable_uri
from tests.fixtures.airflow import xcom
from tests.fixtures.servers import free_port
from tests.fixtures.training import make_checkpoint, make_tar, sha256, write_catalog


def pull(
    tmp_path: Path, checkpoint: str | None, *, name: str = "my-retina", root: str | None = None, **options
):
    """Run the operator once for a user catalogue entry pointing at ``checkpoint``."""
    entry = {"name": name, "checkpoint": checkpoint}
    if options:
        entry["options"] = options
    catalog = write_catalog(tmp_path / "catalog.json", entry)
    root = root or f"file://{tmp_path}/root"
    op = BaseModelPullOperator(task_id="pull", model=name, root=root, catalog_file=catalog)
    return op.execute(context={})


def pull_model(tmp_path: Path, model: str, *, catalog: str | None = None, **kwargs) -> str:
    op = BaseModelPullOperator(
        task_id="pull", model=model, root=f"file://{tmp_path}/root", catalog_file=catalog, **kwargs
    )
    return op.execute(context={})


def marker(folder: Path) -> dict:
    return json.loads((folder / PULLED_MARKER).read_text())


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def published_path(uri: str) -> str:
    """The URL path a published URI has on storage.googleapis.com (what the mirror serves)."""
    return urlparse(public_uri(uri)).path


def serve_published(file_server, model: str, tmp_path: Path) -> dict[str, bytes]:
    """Placeholder files of ``model``'s published weights, at their published URL paths."""
    pretrained = get_model(model).pretrained
    path = published_path(pretrained.uri)
    if pretrained.format == "checkpoint":
        files = make_checkpoint(tmp_path / "published", prefix=path.rsplit("/", 1)[1], data_size=20_000)
        for name, data in files.items():
            file_server.files[f"{path}.{name.split('.', 1)[1]}"] = data
        return files
    if pretrained.format == "checkpoint_tar":
        files = make_checkpoint(
            tmp_path / "published", prefix=pretrained.checkpoint or "ckpt-9", data_size=20_000
        )
        file_server.files[path] = make_tar(files, top=Path(path).name.split(".")[0])
        return files
    data = b"HDF5 placeholder " * 1000
    file_server.files[path] = data
    return {Path(path).name: data}


@pytest.fixture
def mirrored(file_server, monkeypatch):
    """storage.googleapis.com mirrored onto the loopback server, through CVAT_WEIGHTS_MIRRORS."""
    monkeypatch.setenv(ENV_VAR, json.dumps({GCS_HTTPS: f"{file_server.url}/"}))
    monkeypatch.delenv("AIRFLOW_VAR_CVAT_RETRAIN", raising=False)
    return file_server


# -- published weights, through the mirror setting ---------------------------------------------


NOT_H5 = [spec.name for spec in BUILTIN_MODELS if spec.pretrained.format != "keras_h5"]


@pytest.mark.parametrize("model", NOT_H5)
def test_published_checkpoint_is_pulled_through_the_mirror_once(tmp_path: Path, mirrored, model: str) -> None:
    files = serve_published(mirrored, model, tmp_path)
    pretrained = get_model(model).pretrained

    uri = pull_model(tmp_path, model)

    dest = tmp_path / "root" / "base_models" / model
    assert uri == f"file://{dest}"
    for name, data in files.items():
        assert (dest / name).read_bytes() == data
    info = marker(dest)
    path = published_path(pretrained.uri)
    assert info["source"] == f"{mirrored.url}{path}"
    assert info["published"] == pretrained.uri
    assert (info["format"], info["modules"]) == (pretrained.format, list(pretrained.modules))
    prefix = next(n for n in files if n.endswith(".index"))[: -len(".index")]
    assert info["checkpoint"] == prefix
    assert (dest / "checkpoint").read_text().startswith(f'model_checkpoint_path: "{prefix}"')
    assert info["bytes"] == sum(len(b) for b in mirrored.files.values())
    assert info["weights"] == "pretrained" and info["dataset"] == pretrained.dataset
    if pretrained.format == "checkpoint_tar":
        assert info["sha256"] == sha256(mirrored.files[path])

    before, requests = mtimes(dest), dict(mirrored.requests)
    assert pull_model(tmp_path, model) == uri
    assert mtimes(dest) == before  # cached: nothing rewritten, not even the marker
    assert dict(mirrored.requests) == requests


def test_keras_h5_is_verified_by_its_md5(tmp_path: Path, mirrored) -> None:
    """The built-in h5 with its published md5 refuses other bytes; a matching md5 is accepted."""
    serve_published(mirrored, "frcnn-nas-coco", tmp_path)
    path = published_path(get_model("frcnn-nas-coco").pretrained.uri)
    actual = hashlib.md5(mirrored.files[path]).hexdigest()
    dest = tmp_path / "root" / "base_models" / "frcnn-nas-coco"

    with pytest.raises(AirflowException, match=f"md5 is {actual}, expected d81d89dc07e6e56530c4e77faddd61b5"):
        pull_model(tmp_path, "frcnn-nas-coco")
    assert not (dest / PULLED_MARKER).exists()
    assert not (dest / "NASNet-large-no-top.h5").exists()

    entry = get_model("frcnn-nas-coco").to_dict()
    entry["pretrained"]["md5"] = actual
    catalog = write_catalog(tmp_path / "c.json", entry)
    pull_model(tmp_path, "frcnn-nas-coco", catalog=catalog)
    info = marker(dest)
    assert (info["format"], info["modules"], info["checkpoint"]) == (
        "keras_h5",
        ["backbone"],
        "NASNet-large-no-top.h5",
    )
    assert info["md5"] == actual
    assert (dest / "NASNet-large-no-top.h5").read_bytes() == mirrored.files[path]
    assert not (dest / "checkpoint").exists()


def test_wrong_sha256_of_a_tarball_is_refused_naming_both(tmp_path: Path, mirrored) -> None:
    files = make_checkpoint(tmp_path / "src", prefix="ckpt-5")
    mirrored.files["/weights/model.tar.gz"] = archive = make_tar(files)
    pretrained = {"uri": "gs://weights/model.tar.gz", "format": "checkpoint_tar", "modules": ["backbone"],
                  "sha256": "ab" * 32}  # fmt: skip
    catalog = write_catalog(tmp_path / "c.json", {"name": "mine", "pretrained": pretrained})

    with pytest.raises(AirflowException, match=f"sha256 is {sha256(archive)}, expected {'ab' * 32}"):
        pull_model(tmp_path, "mine", catalog=catalog)
    assert not (tmp_path / "root" / "base_models" / "mine" / PULLED_MARKER).exists()


def test_tarball_without_the_named_checkpoint_is_refused(tmp_path: Path, mirrored) -> None:
    files = make_checkpoint(tmp_path / "src", prefix="ckpt-1")
    mirrored.files["/tf_model_garden/vision/retinanet/retinanet-resnet50fpn.tar.gz"] = make_tar(files)
    with pytest.raises(AirflowFailException, match=r"holds no ckpt-33264\.index.*ckpt-1\.index"):
        pull_model(tmp_path, "retinanet-resnet50fpn-coco")
    assert not (tmp_path / "root" / "base_models" / "retinanet-resnet50fpn-coco" / PULLED_MARKER).exists()


def test_mirror_in_s3_is_read_with_the_root_connection(tmp_path: Path, s3_bucket: str, monkeypatch) -> None:
    import boto3

    files = make_checkpoint(tmp_path / "src", prefix="ckpt-33264")
    key = "mirror/tf_model_garden/vision/retinanet/retinanet-resnet50fpn.tar.gz"
    boto3.client("s3").put_object(Bucket=s3_bucket, Key=key, Body=make_tar(files))
    op = BaseModelPullOperator(
        task_id="pull",
        model="retinanet-resnet50fpn-coco",
        root=f"s3://{s3_bucket}/cvat",
        storage_conn_id="aws_default",
        mirrors={GCS_HTTPS: f"s3://{s3_bucket}/mirror/"},
    )
    assert op.execute(context={}) == f"s3://{s3_bucket}/cvat/base_models/retinanet-resnet50fpn-coco"

    s3 = boto3.client("s3")
    prefix = "cvat/base_models/retinanet-resnet50fpn-coco/"
    body = s3.get_object(Bucket=s3_bucket, Key=prefix + "ckpt-33264.data-00000-of-00001")["Body"].read()
    assert body == files["ckpt-33264.data-00000-of-00001"]
    info = json.loads(s3.get_object(Bucket=s3_bucket, Key=prefix + PULLED_MARKER)["Body"].read())
    assert info["source"] == f"s3://{s3_bucket}/{key}"
    assert info["checkpoint"] == "ckpt-33264"


def test_mirror_setting_comes_from_argument_then_variable_then_environment(
    tmp_path: Path, file_server, monkeypatch
) -> None:
    serve_published(file_server, "ssd-mobilenet-v2-coco", tmp_path)
    nowhere = f"http://127.0.0.1:{free_port()}/"
    monkeypatch.setenv(ENV_VAR, json.dumps({GCS_HTTPS: nowhere}))
    monkeypatch.setenv("AIRFLOW_VAR_CVAT_RETRAIN", json.dumps({"root": "x", "mirrors": {GCS_HTTPS: nowhere}}))
    mirror = {"https://storage.googleapis.com/tf_model_garden/": f"{file_server.url}/tf_model_garden/"}

    pull_model(tmp_path, "ssd-mobilenet-v2-coco", mirrors=mirror)  # the argument wins

    monkeypatch.setenv(
        "AIRFLOW_VAR_CVAT_RETRAIN", json.dumps({"mirrors": {"gs://tf_model_garden/": nowhere}})
    )
    with pytest.raises(
        SourceUnreachable, match=f"cannot reach {nowhere}vision/resnet.*the mirror of https://"
    ):
        pull_model(tmp_path, "frcnn-res101-coco")  # the Variable, not the environment's working mirror
    monkeypatch.setenv(ENV_VAR, json.dumps({GCS_HTTPS: f"{file_server.url}/"}))
    monkeypatch.setenv(
        "AIRFLOW_VAR_CVAT_RETRAIN", json.dumps({"mirrors": {GCS_HTTPS: f"{file_server.url}/"}})
    )
    serve_published(file_server, "frcnn-res101-coco", tmp_path)
    pull_model(tmp_path, "frcnn-res101-coco")


def test_bad_mirror_setting_fails_saying_what_is_wrong(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("AIRFLOW_VAR_CVAT_RETRAIN", raising=False)
    monkeypatch.setenv(ENV_VAR, "{not json")
    with pytest.raises(AirflowFailException, match=f"{ENV_VAR} is not valid JSON.*storage.googleapis.com"):
        pull_model(tmp_path, "mask-rcnn")
    with pytest.raises(AirflowFailException, match="end both with '/' or neither"):
        pull_model(tmp_path, "mask-rcnn", mirrors={GCS_HTTPS: "s3://bucket/mirror"})


def test_missing_file_in_the_mirror_says_to_copy_it_there(tmp_path: Path, mirrored) -> None:
    with pytest.raises(
        AirflowFailException, match="answered 404.*the mirror of https://storage.googleapis.com"
    ):
        pull_model(tmp_path, "frcnn-inc-resv2-atr-coco")


def test_init_base_folder_is_used_as_random_weights(tmp_path: Path, mirrored, capsys) -> None:
    """The offline demo and the DAG tests: init-base filled the folder; nothing is downloaded."""
    dest = tmp_path / "root" / "base_models" / "ssd-mobilenet-v2-coco"
    make_checkpoint(dest)
    (dest / "base_model.json").write_text(
        json.dumps({"modules": "backbone,decoder", "weights": "random (init-base)"})
    )

    assert pull_model(tmp_path, "ssd-mobilenet-v2-coco") == f"file://{dest}"
    assert not mirrored.requests
    info = marker(dest)
    assert (info["weights"], info["checkpoint"], info["modules"]) == (
        "random (init-base)",
        "ckpt-1",
        ["backbone", "decoder"],
    )
    log = capsys.readouterr().out
    assert "RANDOM weights" in log and "Delete the folder to pull the published weights" in log


# -- a deployment's own checkpoint URI ---------------------------------------------------------


def test_file_prefix_is_copied_verified_marked_and_cached(tmp_path: Path) -> None:
    files = make_checkpoint(tmp_path / "src")
    uri = pull(tmp_path, f"file://{tmp_path}/src/ckpt-1")

    dest = tmp_path / "root" / "base_models" / "my-retina"
    assert uri == f"file://{dest}"
    for name, data in files.items():
        assert (dest / name).read_bytes() == data
    assert (dest / "checkpoint").read_text().startswith('model_checkpoint_path: "ckpt-1"')
    info = marker(dest)
    assert info["source"] == f"file://{tmp_path}/src/ckpt-1"
    assert (info["format"], info["checkpoint"], info["modules"]) == (
        "checkpoint",
        "ckpt-1",
        ["backbone", "decoder"],
    )
    assert info["files"]["ckpt-1.data-00000-of-00001"]["sha256"] == sha256(
        files["ckpt-1.data-00000-of-00001"]
    )

    before = mtimes(dest)
    assert pull(tmp_path, f"file://{tmp_path}/src/ckpt-1") == uri
    assert mtimes(dest) == before  # cache hit: nothing rewritten, not even the marker


def test_checkpoint_uri_wins_over_pretrained(tmp_path: Path, mirrored) -> None:
    files = make_checkpoint(tmp_path / "src", prefix="ckpt-3")
    dest = tmp_path / "root" / "base_models" / "retinanet-resnet50fpn-coco"
    make_checkpoint(dest)  # an old init-base folder: an entry's own checkpoint replaces it
    (dest / "base_model.json").write_text('{"weights": "random (init-base)"}')
    entry = {
        **get_model("retinanet-resnet50fpn-coco").to_dict(),
        "checkpoint": f"file://{tmp_path}/src/ckpt-3",
    }
    pull_model(tmp_path, "retinanet-resnet50fpn-coco", catalog=write_catalog(tmp_path / "c.json", entry))
    assert (dest / "ckpt-3.index").read_bytes() == files["ckpt-3.index"]
    assert not (dest / "ckpt-1.index").exists() and not (dest / "base_model.json").exists()
    assert marker(dest)["weights"] == "pretrained"
    assert marker(dest)["modules"] == ["backbone", "decoder"]
    assert not mirrored.requests


def test_changed_source_is_pulled_again_and_leaves_nothing_stale(tmp_path: Path) -> None:
    make_checkpoint(tmp_path / "v1")
    new = make_checkpoint(tmp_path / "v2", prefix="ckpt-7")
    pull(tmp_path, f"file://{tmp_path}/v1/ckpt-1")
    pull(tmp_path, f"file://{tmp_path}/v2/ckpt-7")
    dest = tmp_path / "root" / "base_models" / "my-retina"
    assert (dest / "ckpt-7.index").read_bytes() == new["ckpt-7.index"]
    assert not (dest / "ckpt-1.index").exists()
    assert marker(dest)["source"].endswith("v2/ckpt-7")
    assert '"ckpt-7"' in (dest / "checkpoint").read_text()


def test_s3_source_into_s3_root(tmp_path: Path, s3_bucket: str) -> None:
    import boto3

    s3 = boto3.client("s3")
    files = make_checkpoint(tmp_path / "src")
    for name, data in files.items():
        s3.put_object(Bucket=s3_bucket, Key=f"weights/{name}", Body=data)
    s3.put_object(Bucket=s3_bucket, Key="weights/ckpt-10.index", Body=b"another checkpoint: not ours")
    catalog = write_catalog(
        tmp_path / "c.json", {"name": "my-retina", "checkpoint": f"s3://{s3_bucket}/weights/ckpt-1"}
    )
    op = BaseModelPullOperator(
        task_id="pull",
        model="my-retina",
        root=f"s3://{s3_bucket}/cvat",
        catalog_file=catalog,
        storage_conn_id="aws_default",
        source_conn_id="aws_default",
    )
    uri = op.execute(context={})

    assert uri == f"s3://{s3_bucket}/cvat/base_models/my-retina"
    keys = {o["Key"]: o for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix="cvat/")["Contents"]}
    prefix = "cvat/base_models/my-retina/"
    assert set(keys) == {prefix + n for n in [*files, "checkpoint", PULLED_MARKER]}
    body = s3.get_object(Bucket=s3_bucket, Key=prefix + "ckpt-1.data-00000-of-00001")["Body"].read()
    assert body == files["ckpt-1.data-00000-of-00001"]

    op.execute(context={})
    again = {o["Key"]: o for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix="cvat/")["Contents"]}
    assert {k: v["ETag"] for k, v in again.items()} == {k: v["ETag"] for k, v in keys.items()}
    assert {k: v["LastModified"] for k, v in again.items()} == {k: v["LastModified"] for k, v in keys.items()}


def test_https_archive_with_sha256_is_downloaded_once(tmp_path: Path, file_server) -> None:
    files = make_checkpoint(tmp_path / "src")
    archive = make_tar(files)
    file_server.files["/tf_model_garden/ckpt.tar.gz"] = archive
    url = f"{file_server.url}/tf_model_garden/ckpt.tar.gz"

    uri = pull(tmp_path, url, sha256=sha256(archive))
    assert pull(tmp_path, url, sha256=sha256(archive)) == uri

    assert file_server.requests["/tf_model_garden/ckpt.tar.gz"] == 1
    dest = tmp_path / "root" / "base_models" / "my-retina"
    assert {p.name for p in dest.iterdir()} == {*files, "checkpoint", PULLED_MARKER}
    assert (dest / "ckpt-1.index").read_bytes() == files["ckpt-1.index"]


def test_https_prefix_fetches_index_and_data(tmp_path: Path, file_server) -> None:
    files = make_checkpoint(tmp_path / "src")
    for name, data in files.items():
        file_server.files[f"/w/{name}"] = data
    pull(tmp_path, f"{file_server.url}/w/ckpt-1")
    pull(tmp_path, f"{file_server.url}/w/ckpt-1")
    assert dict(file_server.requests) == {"/w/ckpt-1.index": 1, "/w/ckpt-1.data-00000-of-00001": 1}


def test_gs_uris_read_through_public_https() -> None:
    assert (
        to_readable_uri("gs://tf_model_garden/vision/retinanet/ckpt-1")
        == "https://storage.googleapis.com/tf_model_garden/vision/retinanet/ckpt-1"
    )
    assert to_readable_uri("s3://b/k") == "s3://b/k"


def test_interrupted_copy_never_looks_complete_and_a_rerun_completes(tmp_path: Path, file_server) -> None:
    files = make_checkpoint(tmp_path / "src")
    archive = make_tar(files)
    file_server.files["/ckpt.tar.gz"] = archive
    file_server.cut_after["/ckpt.tar.gz"] = len(archive) // 2
    url = f"{file_server.url}/ckpt.tar.gz"
    dest = tmp_path / "root" / "base_models" / "my-retina"

    with pytest.raises(SourceUnreachable, match="cut off|bytes"):
        pull(tmp_path, url)
    assert not (dest / PULLED_MARKER).exists()

    del file_server.cut_after["/ckpt.tar.gz"]
    pull(tmp_path, url)
    assert marker(dest)["checkpoint"] == "ckpt-1"
    assert (dest / "ckpt-1.data-00000-of-00001").read_bytes() == files["ckpt-1.data-00000-of-00001"]
    assert file_server.requests["/ckpt.tar.gz"] == 2


def test_checksum_mismatch_is_refused(tmp_path: Path) -> None:
    make_checkpoint(tmp_path / "src")
    wrong = {"ckpt-1.data-00000-of-00001": "0" * 64}
    with pytest.raises(AirflowException, match="does not verify.*sha256 is [0-9a-f]{64}, expected 0{64}"):
        pull(tmp_path, f"file://{tmp_path}/src/ckpt-1", sha256=wrong)
    dest = tmp_path / "root" / "base_models" / "my-retina"
    assert not (dest / PULLED_MARKER).exists()
    assert not (dest / "ckpt-1.data-00000-of-00001").exists()


def test_unknown_model_lists_the_known_ones(tmp_path: Path) -> None:
    op = BaseModelPullOperator(task_id="pull", model="ssd-mobilenet-v3", root=f"file://{tmp_path}")
    with pytest.raises(AirflowFailException, match="unknown model 'ssd-mobilenet-v3'.*ssd-mobilenet-v2-coco"):
        op.execute(context={})


def test_unreachable_url_says_where_it_looked(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/weights/ckpt.tar.gz"
    with pytest.raises(SourceUnreachable, match=f"my-retina.*cannot reach {url}"):
        pull(tmp_path, url)


def test_missing_url_and_missing_files_say_where_they_looked(tmp_path: Path, file_server) -> None:
    with pytest.raises(AirflowFailException, match=f"{file_server.url}/nothing.tgz answered 404"):
        pull(tmp_path, f"{file_server.url}/nothing.tgz")
    with pytest.raises(SourceUnreachable, match=r"looked for .*/nowhere/ckpt-1\.index"):
        pull(tmp_path, f"file://{tmp_path}/nowhere/ckpt-1")


def test_model_without_any_source_uses_what_is_in_its_folder(tmp_path: Path) -> None:
    catalog = write_catalog(tmp_path / "c.json", {"name": "bare"})
    with pytest.raises(AirflowFailException, match="init-base --model bare"):
        pull_model(tmp_path, "bare", catalog=catalog)
    make_checkpoint(tmp_path / "root" / "base_models" / "bare")
    assert pull_model(tmp_path, "bare", catalog=catalog) == f"file://{tmp_path}/root/base_models/bare"
    assert marker(tmp_path / "root" / "base_models" / "bare")["checkpoint"] == "ckpt-1"


def test_pull_through_a_dag_run(run_dag, tmp_path: Path) -> None:
    """The demo's form: a catalogue entry pointing at a folder init-base wrote (random weights)."""
    make_checkpoint(tmp_path / "src")
    (tmp_path / "src" / "base_model.json").write_text('{"weights": "random (init-base)"}')
    catalog = write_catalog(
        tmp_path / "c.json", {"name": "my-retina", "checkpoint": f"file://{tmp_path}/src/"}
    )
    run = run_dag(
        f"""
        from airflow.sdk import DAG
        from airflow_cvat.operators.base_model import BaseModelPullOperator

        with DAG("pull_base_model", schedule=None):
            BaseModelPullOperator(
                task_id="pull", model="{{{{ params.model }}}}", root="file://{tmp_path}/root",
                catalog_file="{catalog}", params={{"model": "my-retina"}},
            )
        """,
        "pull_base_model",
    )
    assert str(run.state) == "success"
    assert xcom(run, "pull") == f"file://{tmp_path}/root/base_models/my-retina"
    info = marker(tmp_path / "root" / "base_models" / "my-retina")
    assert (info["checkpoint"], info["weights"]) == ("ckpt-1", "random (init-base)")
