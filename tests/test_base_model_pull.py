"""BaseModelPullOperator: file://, s3:// (moto) and https (local server) sources, cache, integrity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_cvat.operators.base_model import BaseModelPullOperator, SourceUnreachable, to_readable_uri
from airflow_cvat.storage import COMPLETE_MARKER
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


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_file_prefix_is_copied_verified_marked_and_cached(tmp_path: Path) -> None:
    files = make_checkpoint(tmp_path / "src")
    uri = pull(tmp_path, f"file://{tmp_path}/src/ckpt-1")

    dest = tmp_path / "root" / "base_models" / "my-retina"
    assert uri == f"file://{dest}"
    for name, data in files.items():
        assert (dest / name).read_bytes() == data
    assert (dest / "checkpoint").read_text().startswith('model_checkpoint_path: "ckpt-1"')
    marker = json.loads((dest / COMPLETE_MARKER).read_text())
    assert marker["source"] == f"file://{tmp_path}/src/ckpt-1"
    assert marker["files"]["ckpt-1.data-00000-of-00001"]["sha256"] == sha256(
        files["ckpt-1.data-00000-of-00001"]
    )

    before = mtimes(dest)
    assert pull(tmp_path, f"file://{tmp_path}/src/ckpt-1") == uri
    assert mtimes(dest) == before  # cache hit: nothing rewritten, not even the marker


def test_changed_source_is_pulled_again(tmp_path: Path) -> None:
    make_checkpoint(tmp_path / "v1")
    new = make_checkpoint(tmp_path / "v2", prefix="ckpt-7")
    pull(tmp_path, f"file://{tmp_path}/v1/ckpt-1")
    pull(tmp_path, f"file://{tmp_path}/v2/ckpt-7")
    dest = tmp_path / "root" / "base_models" / "my-retina"
    assert (dest / "ckpt-7.index").read_bytes() == new["ckpt-7.index"]
    assert json.loads((dest / COMPLETE_MARKER).read_text())["source"].endswith("v2/ckpt-7")
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
    assert set(keys) == {prefix + n for n in [*files, "checkpoint", COMPLETE_MARKER]}
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
    assert {p.name for p in dest.iterdir()} == {*files, "checkpoint", COMPLETE_MARKER}
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
    assert not (dest / COMPLETE_MARKER).exists()

    del file_server.cut_after["/ckpt.tar.gz"]
    pull(tmp_path, url)
    assert (dest / COMPLETE_MARKER).exists()
    assert (dest / "ckpt-1.data-00000-of-00001").read_bytes() == files["ckpt-1.data-00000-of-00001"]
    assert file_server.requests["/ckpt.tar.gz"] == 2


def test_checksum_mismatch_is_refused(tmp_path: Path) -> None:
    make_checkpoint(tmp_path / "src")
    wrong = {"ckpt-1.data-00000-of-00001": "0" * 64}
    with pytest.raises(AirflowException, match="does not verify.*sha256"):
        pull(tmp_path, f"file://{tmp_path}/src/ckpt-1", sha256=wrong)
    dest = tmp_path / "root" / "base_models" / "my-retina"
    assert not (dest / COMPLETE_MARKER).exists()
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


def test_model_without_source_uses_what_init_base_wrote(tmp_path: Path) -> None:
    op = BaseModelPullOperator(task_id="pull", model="ssd-mobilenet-v2-coco", root=f"file://{tmp_path}")
    with pytest.raises(AirflowFailException, match="init-base --model ssd-mobilenet-v2-coco"):
        op.execute(context={})
    make_checkpoint(tmp_path / "base_models" / "ssd-mobilenet-v2-coco")
    assert op.execute(context={}) == f"file://{tmp_path}/base_models/ssd-mobilenet-v2-coco"


def test_pull_through_a_dag_run(run_dag, tmp_path: Path) -> None:
    make_checkpoint(tmp_path / "src")
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
    assert (tmp_path / "root" / "base_models" / "my-retina" / COMPLETE_MARKER).exists()
