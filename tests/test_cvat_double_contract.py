"""Holds the CVAT double to what a real CVAT 2.73 answered (``tests/cvat_recorded``).

Each recorded exchange is replayed against a double seeded like the recorded server (task 1
"fixture-task": 10 frames of 320x240, segment size 5, labels car and person; project 1 with task
2 "webhook-task" of 3 frames, so job 3 exists). Answers are compared by status code, content
type and *shape*: dict keys recursively and the types of leaf values, not the values, because
ids, dates and drawn shapes legitimately differ. Export zips are compared by member layout and
by the keys / XML elements of their annotation files. Finally cvat-sdk, unmodified, is run
against the double.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest
import requests

from tests.cvat_double import CVATDouble

RECORDED = Path(os.environ.get("CVAT_RECORDED_DIR", Path(__file__).resolve().parent / "cvat_recorded"))
RECORDED_HOST = "http://127.0.0.1:8080"
PERSON = {
    "name": "person",
    "color": "#00ff00",
    "attributes": [
        {
            "name": "occluded_by",
            "mutable": True,
            "input_type": "select",
            "default_value": "none",
            "values": ["none", "car", "person"],
        }
    ],
}


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def recorded(name: str) -> dict[str, Any]:
    return json.loads((RECORDED / f"{name}.json").read_text())


def seed(double: CVATDouble) -> None:
    """The recorded server's content, as far as the exchanges depend on it."""
    labels = [{"name": "car", "color": "#ff0000"}, PERSON]
    task_id = double.add_task("fixture-task", labels, frames=10, width=320, height=240, segment_size=5)
    project_id = double.add_project("fixture-project", [{"name": "car", "color": "#ff0000"}, PERSON])
    webhook_task = double.add_task("webhook-task", frames=3, project_id=project_id, width=320, height=240)
    assert (task_id, project_id, webhook_task, double.job_ids(webhook_task)) == (1, 1, 2, [3])


def replay(double: CVATDouble, name: str, session: requests.Session) -> requests.Response:
    """Send the recorded request (method, path, query, JSON body) to the double."""
    request = recorded(name)["request"]
    url = request["url"].replace(RECORDED_HOST, double.url)
    return session.request(request["method"], url, json=request["body"])


def leaf_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"  # CVAT echoes ints it was sent and writes floats it computed
    return type(value).__name__


def assert_same_shape(expected: Any, actual: Any, where: str = "$") -> None:
    """Same dict keys at every level, same leaf types where both sides are non-null."""
    if expected is None or actual is None:
        return
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: expected an object, got {actual!r}"
        assert sorted(actual) == sorted(expected), (
            f"{where}: keys differ: {sorted(actual)} != {sorted(expected)}"
        )
        for key in expected:
            assert_same_shape(expected[key], actual[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list), f"{where}: expected a list, got {actual!r}"
        if expected and actual:
            for index, item in enumerate(actual):
                assert_same_shape(expected[0], item, f"{where}[{index}]")
    else:
        assert leaf_type(actual) == leaf_type(expected), f"{where}: {actual!r} is not like {expected!r}"


def assert_like_recording(response: requests.Response, name: str) -> Any:
    """Status, content type and body shape as recorded; returns the parsed body."""
    record = recorded(name)
    assert response.status_code == record["status_code"], (name, response.text)
    assert response.headers["content-type"] == record["headers"]["content-type"]
    body = response.json()
    assert_same_shape(record["body"], body)
    return body


def as_pattern(text: str) -> str:
    """A recorded value with its digits generalised, as an anchored regex."""
    return "^" + re.sub(r"\d+", r"\\d+", re.escape(text)) + "$"


def member_layout(names: list[str]) -> set[str]:
    """Zip members with image file names replaced by ``*``: the layout, not the content."""
    return {re.sub(r"^(images/(?:[^/]+/)?)[^/]+\.jpg$", r"\1*.jpg", name) for name in names}


def xml_paths(root: ET.Element, prefix: str = "") -> dict[str, set[str]]:
    """Each element path mapped to the XML attribute names seen on it."""
    path = f"{prefix}/{root.tag}"
    found = {path: set(root.attrib)}
    for child in root:
        for child_path, attributes in xml_paths(child, path).items():
            found.setdefault(child_path, set()).update(attributes)
    return found


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seeded() -> CVATDouble:
    with CVATDouble() as double:
        seed(double)
        yield double


@pytest.fixture
def session(seeded: CVATDouble) -> requests.Session:
    with requests.Session() as http:
        http.headers["Authorization"] = f"Bearer {CVATDouble.DEFAULT_TOKEN}"
        yield http


# ---------------------------------------------------------------------------------------------
# JSON exchanges
# ---------------------------------------------------------------------------------------------

SIMPLE_EXCHANGES = [
    "server_about",
    "users_self",
    "task",
    "tasks_list",
    "jobs_by_task",
    "job",
    "labels_by_task",
    "task_data_meta",
    "task_annotations",
    "job_annotations",
    "export_tfrecord_with_images_request",
    "export_tfrecord_no_images_request",
]


@pytest.mark.parametrize("name", SIMPLE_EXCHANGES)
def test_exchange_matches_recording(seeded: CVATDouble, session: requests.Session, name: str) -> None:
    assert_like_recording(replay(seeded, name, session), name)


def test_tfrecord_refusal_is_cvats_exact_body(seeded: CVATDouble, session: requests.Session) -> None:
    response = replay(seeded, "export_tfrecord_with_images_request", session)
    assert response.json() == recorded("export_tfrecord_with_images_request")["body"]


def test_patch_create_matches_recording(seeded: CVATDouble, session: requests.Session) -> None:
    body = assert_like_recording(
        replay(seeded, "task_annotations_patch_create", session), "task_annotations_patch_create"
    )
    created = body["shapes"][0]
    assert (created["frame"], created["label_id"], created["points"]) == (9, 2, [5, 5, 50, 50])
    assert created["id"] in {shape["id"] for shape in seeded.annotations(1)}


def test_job_patch_matches_recording(seeded: CVATDouble, session: requests.Session) -> None:
    body = assert_like_recording(replay(seeded, "job_patch_completed", session), "job_patch_completed")
    assert (body["state"], body["stage"], body["status"]) == ("completed", "acceptance", "completed")
    assert body["project_id"] == 1


@pytest.mark.parametrize("fmt", ["coco", "cvat_images"])
@pytest.mark.parametrize("images", ["with", "no"])
def test_export_flow_matches_recording(
    seeded: CVATDouble, session: requests.Session, fmt: str, images: str
) -> None:
    prefix = f"export_{fmt}_{images}_images"
    started = assert_like_recording(replay(seeded, f"{prefix}_request", session), f"{prefix}_request")
    assert started == recorded(f"{prefix}_request")["body"]  # the rq_id is deterministic

    poll_url = f"{seeded.url}/api/requests/{started['rq_id']}"
    first = assert_like_recording(session.get(poll_url), f"{prefix}_poll_first")
    final = assert_like_recording(session.get(poll_url), f"{prefix}_poll_final")
    assert (first["status"], final["status"]) == ("started", "finished")
    expected_url = recorded(f"{prefix}_poll_final")["body"]["result_url"].replace(RECORDED_HOST, seeded.url)
    assert final["result_url"] == expected_url

    download = session.get(final["result_url"])
    expected_headers = json.loads((RECORDED / f"{prefix}_download_headers.json").read_text())
    assert download.status_code == expected_headers["status_code"]
    assert download.headers["content-type"] == expected_headers["headers"]["content-type"]
    disposition = download.headers["content-disposition"]
    assert re.match(as_pattern(expected_headers["headers"]["content-disposition"]), disposition), disposition
    assert int(download.headers["content-length"]) == len(download.content)
    assert_same_zip(RECORDED / f"{prefix}.zip", download.content, fmt)


@pytest.mark.parametrize("fmt", ["coco", "cvat_images"])
def test_background_export_matches_recording(cvat_double: CVATDouble, fmt: str) -> None:
    """With a worker thread writing the export (the benchmark's mode), CVAT's flow is unchanged."""
    seed(cvat_double)
    cvat_double.background_exports = True
    prefix = f"export_{fmt}_with_images"
    with requests.Session() as http:
        http.headers["Authorization"] = f"Bearer {CVATDouble.DEFAULT_TOKEN}"
        started = assert_like_recording(replay(cvat_double, f"{prefix}_request", http), f"{prefix}_request")
        poll_url = f"{cvat_double.url}/api/requests/{started['rq_id']}"
        first = assert_like_recording(http.get(poll_url), f"{prefix}_poll_first")
        assert first["status"] in ("started", "finished")
        final = first
        for _ in range(10_000):  # bounded by polls, not by time
            if final["status"] != "started":
                break
            final = http.get(poll_url).json()
        assert_like_recording(http.get(poll_url), f"{prefix}_poll_final")
        assert final["status"] == "finished"
        assert_same_zip(RECORDED / f"{prefix}.zip", http.get(final["result_url"]).content, fmt)


@pytest.mark.parametrize("fmt", ["coco", "cvat_images"])
def test_job_export_has_the_recorded_task_layout_with_its_frames(
    seeded: CVATDouble, session: requests.Session, fmt: str
) -> None:
    """Not recorded: a job export is CVAT's task export writer run over the job's frames."""
    format_name = {"coco": "COCO 1.0", "cvat_images": "CVAT for images 1.1"}[fmt]
    started = session.post(
        f"{seeded.url}/api/jobs/2/dataset/export", params={"format": format_name, "save_images": "True"}
    )
    assert started.status_code == 202
    poll_url = f"{seeded.url}/api/requests/{started.json()['rq_id']}"
    assert [session.get(poll_url).json()["status"] for _ in range(2)] == ["started", "finished"]
    final = assert_like_recording(session.get(poll_url), f"export_{fmt}_with_images_poll_final")
    assert (final["operation"]["target"], final["operation"]["job_id"]) == ("job", 2)
    content = session.get(final["result_url"]).content
    assert_same_zip(RECORDED / f"export_{fmt}_with_images.zip", content, fmt)
    images = sorted(
        n.rsplit("/", 1)[-1] for n in zipfile.ZipFile(io.BytesIO(content)).namelist() if n.endswith(".jpg")
    )
    assert images == [f"frame_{n:06d}.jpg" for n in range(5, 10)]


def export_zip(double: CVATDouble, target: str, object_id: int, format_name: str) -> zipfile.ZipFile:
    auth = {"Authorization": f"Bearer {double.DEFAULT_TOKEN}"}
    params = {"format": format_name, "save_images": "True"}
    url = f"{double.url}/api/{target}s/{object_id}/dataset/export"
    rq_id = requests.post(url, params=params, headers=auth).json()["rq_id"]
    final = {"status": "started"}
    while final["status"] == "started":
        final = get(double, f"/api/requests/{rq_id}").json()
    return zipfile.ZipFile(io.BytesIO(requests.get(final["result_url"], headers=auth).content))


def test_task_subset_is_exported_as_cvat_writes_it(cvat_double: CVATDouble) -> None:
    """Not recorded (the recorded task has no subset): the recorded layout, with the subset's name."""
    labels = [{"name": "car", "color": "#ff0000"}, PERSON]
    task_id = cvat_double.add_task(
        "t", labels, frames=10, width=320, height=240, segment_size=5, subset="Train"
    )
    task = assert_like_recording(get(cvat_double, f"/api/tasks/{task_id}"), "task")
    assert task["subset"] == "Train"

    coco = export_zip(cvat_double, "task", task_id, "COCO 1.0")
    recorded_coco = zipfile.ZipFile(RECORDED / "export_coco_with_images.zip")
    renamed = {n.replace("default", "Train") for n in member_layout(recorded_coco.namelist())}
    assert member_layout(coco.namelist()) == renamed
    assert_same_coco(
        json.loads(recorded_coco.read("annotations/instances_default.json")),
        json.loads(coco.read("annotations/instances_Train.json")),
    )
    xml = export_zip(cvat_double, "task", task_id, "CVAT for images 1.1")
    recorded_xml = zipfile.ZipFile(RECORDED / "export_cvat_images_with_images.zip")
    assert member_layout(xml.namelist()) == member_layout(recorded_xml.namelist())
    root = ET.fromstring(xml.read("annotations.xml"))
    assert_same_cvat_xml(ET.fromstring(recorded_xml.read("annotations.xml")), root)
    assert root.findtext("meta/task/subset") == "Train"


def test_project_subsets_keep_repeated_names_apart(cvat_double: CVATDouble) -> None:
    from airflow_cvat.export_archive import read_labels_and_images

    project_id = cvat_double.add_project("p", ["circle", "square"])
    for subset in ("Train", "Validation", "Train"):
        cvat_double.add_task(subset, frames=2, project_id=project_id, subset=subset)
    project = get(cvat_double, f"/api/projects/{project_id}").json()
    assert project["task_subsets"] == ["Train", "Validation"]

    coco = export_zip(cvat_double, "project", project_id, "COCO 1.0")
    assert sorted(n for n in coco.namelist() if n.startswith("annotations/")) == [
        "annotations/instances_Train.json",
        "annotations/instances_Validation.json",
    ]
    xml = export_zip(cvat_double, "project", project_id, "CVAT for images 1.1")
    assert {e.get("subset") for e in ET.fromstring(xml.read("annotations.xml")).iter("image")} == {
        "Train",
        "Validation",
    }
    for archive in (coco, xml):
        _, images = read_labels_and_images(archive)
        keys = sorted((image.subset, image.name) for image in images)
        # Same names in Train and Validation stay two images; the second Train task's are renamed.
        assert keys == [
            ("Train", "frame_000000.jpg"),
            ("Train", "frame_000001.jpg"),
            ("Train", "task_3_frame_000000.jpg"),
            ("Train", "task_3_frame_000001.jpg"),
            ("Validation", "frame_000000.jpg"),
            ("Validation", "frame_000001.jpg"),
        ]
        assert all(image.member for image in images)


def test_requests_list_matches_recording(seeded: CVATDouble, session: requests.Session) -> None:
    response = session.post(f"{seeded.url}/api/tasks/1/dataset/export?format=COCO+1.0&save_images=False")
    session.get(f"{seeded.url}/api/requests/{response.json()['rq_id']}")
    body = assert_like_recording(replay(seeded, "requests_list", session), "requests_list")
    assert body["count"] >= 1


# ---------------------------------------------------------------------------------------------
# Frames (GET .../data?type=frame): not recorded, held to the recorded meta and CVAT's own rules
# ---------------------------------------------------------------------------------------------


def test_frames_match_the_recorded_meta_and_cvats_rules(
    seeded: CVATDouble, session: requests.Session
) -> None:
    """No frame was recorded; what was recorded is each frame's size (``task_data_meta``).

    The status codes and bodies follow CVAT 2.73's ``_DataGetter`` and ``TaskFrameProvider``: the
    image bytes with the type guessed from the file name; 400 with a list for a bad ``type``,
    missing ``number`` or bad ``quality``; 400 with a bare JSON string for a frame outside the
    task (or the job).
    """
    from PIL import Image

    sizes = [(f["width"], f["height"]) for f in recorded("task_data_meta")["body"]["frames"]]
    for number, size in enumerate(sizes):
        for quality in ("original", "compressed"):
            response = session.get(
                f"{seeded.url}/api/tasks/1/data",
                params={"type": "frame", "number": number, "quality": quality},
            )
            assert response.status_code == 200, response.text
            assert response.headers["content-type"] == "image/jpeg"
            assert int(response.headers["content-length"]) == len(response.content)
            assert Image.open(io.BytesIO(response.content)).size == size
    default = session.get(f"{seeded.url}/api/tasks/1/data?type=frame&number=3")  # quality: compressed
    assert default.ok and default.headers["content-type"] == "image/jpeg"

    def refused(path: str, body: Any) -> None:
        response = session.get(seeded.url + path)
        assert response.status_code == 400, (path, response.text)
        assert response.headers["content-type"] == "application/vnd.cvat+json"
        assert response.json() == body, path

    refused(
        "/api/tasks/1/data?type=frame&number=10",
        "Invalid frame '10'. The frame number should be in the [0, 10] range",
    )
    refused("/api/tasks/1/data?number=0", ["Data type not specified or has wrong value"])
    refused("/api/tasks/1/data?type=picture&number=0", ["Data type not specified or has wrong value"])
    refused("/api/tasks/1/data?type=frame", ["Number is not specified"])
    refused("/api/tasks/1/data?type=frame&number=0&quality=best", ["Wrong quality value"])
    refused("/api/jobs/1/data?type=frame&number=5", "Incorrect requested frame number: 5")
    assert session.get(f"{seeded.url}/api/tasks/99/data?type=frame&number=0").status_code == 404
    assert requests.get(f"{seeded.url}/api/tasks/1/data?type=frame&number=0").status_code == 401

    import cvat_sdk

    with cvat_sdk.make_client(seeded.url, access_token=seeded.DEFAULT_TOKEN) as client:
        by_task = client.tasks.retrieve(1).get_frame(7, quality="original").read()
        by_job = client.jobs.retrieve(2).get_frame(7, quality="original").read()
    assert by_task == by_job == session.get(f"{seeded.url}/api/tasks/1/data?type=frame&number=7").content


# ---------------------------------------------------------------------------------------------
# Zips
# ---------------------------------------------------------------------------------------------


def assert_same_zip(recorded_zip: Path, content: bytes, fmt: str) -> None:
    expected, actual = zipfile.ZipFile(recorded_zip), zipfile.ZipFile(io.BytesIO(content))
    assert member_layout(actual.namelist()) == member_layout(expected.namelist())
    if fmt == "coco":
        assert_same_coco(
            json.loads(expected.read("annotations/instances_default.json")),
            json.loads(actual.read("annotations/instances_default.json")),
        )
    else:
        assert_same_cvat_xml(
            ET.fromstring(expected.read("annotations.xml")), ET.fromstring(actual.read("annotations.xml"))
        )


def assert_same_coco(expected: dict[str, Any], actual: dict[str, Any]) -> None:
    assert sorted(actual) == sorted(expected)
    assert_same_shape(expected["info"], actual["info"])
    for section in ("licenses", "categories", "images"):
        assert_same_shape(expected[section], actual[section], section)
    # Annotation "attributes" hold each label's own attributes: compare everything else.
    strip = lambda items: [{k: v for k, v in a.items() if k != "attributes"} for a in items]  # noqa: E731
    assert_same_shape(strip(expected["annotations"]), strip(actual["annotations"]), "annotations")
    assert all("occluded" in a["attributes"] for a in actual["annotations"])
    assert [c["id"] for c in actual["categories"]] == [1, 2]
    assert [i["id"] for i in actual["images"]] == list(range(1, len(actual["images"]) + 1))
    polygons = [a for a in actual["annotations"] if a["segmentation"]]
    boxes = [a for a in actual["annotations"] if not a["segmentation"]]
    assert polygons and boxes  # the seeded data has both, like the recording


def assert_same_cvat_xml(expected: ET.Element, actual: ET.Element) -> None:
    want, got = xml_paths(expected), xml_paths(actual)
    # The recording also has a tag and per-shape attributes; the synthetic data has neither,
    # and the writer does not list label attribute specs.
    optional = re.compile(r"/image/tag|/image/\w+/attribute|/labels/label/attributes/attribute")
    assert {p for p in want if not optional.search(p)} == {p for p in got if not optional.search(p)}
    for path, attributes in got.items():
        assert attributes == want[path], path
    assert actual.findtext("version") == "1.1"


# ---------------------------------------------------------------------------------------------
# cvat-sdk, unmodified
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("auth", ["access_token", "password"])
def test_cvat_sdk_lists_gets_jobs_and_exports(cvat_double: CVATDouble, tmp_path: Path, auth: str) -> None:
    import cvat_sdk

    seed(cvat_double)
    if auth == "access_token":
        client = cvat_sdk.make_client(cvat_double.url, access_token=cvat_double.DEFAULT_TOKEN)
    else:
        credentials = (cvat_double.DEFAULT_USERNAME, cvat_double.DEFAULT_PASSWORD)
        client = cvat_sdk.make_client(cvat_double.url, credentials=credentials)
    with client:
        client.config.status_check_period = 0.01
        assert sorted(t.name for t in client.tasks.list()) == ["fixture-task", "webhook-task"]
        task = client.tasks.retrieve(1)
        jobs = task.get_jobs()
        assert sorted((j.id, j.start_frame, j.stop_frame, j.state, j.stage) for j in jobs) == [
            (1, 0, 4, "new", "annotation"),
            (2, 5, 9, "new", "annotation"),
        ]
        page, _ = client.api_client.jobs_api.list(task_id=1)
        assert page.count == 2
        assert [label.name for label in task.get_labels()] == ["car", "person"]
        path = task.export_dataset("COCO 1.0", tmp_path / "task.zip", include_images=True)
        names = zipfile.ZipFile(path).namelist()
        assert "annotations/instances_default.json" in names
        assert sum(n.startswith("images/default/") for n in names) == 10

    sent = cvat_double.requests_to("GET", r"^/api/tasks/1$")[0]
    if auth == "access_token":
        assert sent.header("Authorization") == f"Bearer {cvat_double.DEFAULT_TOKEN}"
    else:
        assert "sessionid=" in (sent.header("Cookie") or "")


# ---------------------------------------------------------------------------------------------
# The double's own promises (auth, organizations, faults, lazy frames)
# ---------------------------------------------------------------------------------------------


def get(double: CVATDouble, path: str, **headers: str) -> requests.Response:
    headers.setdefault("Authorization", f"Bearer {double.DEFAULT_TOKEN}")
    return requests.get(double.url + path, headers=headers)


def test_auth_schemes_and_refusals(cvat_double: CVATDouble) -> None:
    cvat_double.add_task("t", frames=2)
    assert get(cvat_double, "/api/users/self").json()["username"] == "admin"
    assert get(cvat_double, "/api/tasks/1", Authorization=f"Token {cvat_double.DEFAULT_TOKEN}").ok
    basic = requests.get(cvat_double.url + "/api/tasks/1", auth=("admin", CVATDouble.DEFAULT_PASSWORD))
    assert basic.ok
    wrong = get(cvat_double, "/api/tasks/1", Authorization="Bearer nope")
    assert (wrong.status_code, wrong.headers["content-type"], wrong.json()) == (
        401,
        "application/vnd.cvat+json",
        {"detail": "Invalid token."},
    )
    assert requests.get(cvat_double.url + "/api/tasks/1", auth=("admin", "bad")).status_code == 401
    assert requests.get(cvat_double.url + "/api/tasks/1").status_code == 401
    missing = get(cvat_double, "/api/tasks/99")
    assert (missing.status_code, missing.json()) == (404, {"detail": "Not found."})
    cvat_double.tokens["other"] = "admin"
    assert get(cvat_double, "/api/tasks/1", Authorization="Bearer other").ok


def test_organizations(cvat_double: CVATDouble) -> None:
    cvat_double.add_organization("team")
    cvat_double.add_user("outsider", "pw", token="outsider-token")
    cvat_double.add_task("personal", frames=1)
    cvat_double.add_task("team-task", frames=1, organization="team")
    names = lambda response: [t["name"] for t in response.json()["results"]]  # noqa: E731
    assert names(get(cvat_double, "/api/tasks", **{"X-Organization": "team"})) == ["team-task"]
    assert names(get(cvat_double, "/api/tasks?org=")) == ["personal"]
    assert names(get(cvat_double, "/api/tasks")) == ["team-task", "personal"]
    outsider = {"Authorization": "Bearer outsider-token"}
    assert get(cvat_double, "/api/tasks", **outsider, **{"X-Organization": "team"}).status_code == 403
    assert get(cvat_double, "/api/tasks/2", **outsider).status_code == 403
    assert names(get(cvat_double, "/api/tasks", **outsider)) == ["personal"]
    assert cvat_double.requests_to("GET", "/api/tasks$")[0].header("x-organization") == "team"


def test_faults_polls_and_malformed_zip(cvat_double: CVATDouble) -> None:
    cvat_double.add_task("t", frames=4, segment_size=2)
    cvat_double.fail_next("GET", r"^/api/tasks/1$", 500)
    cvat_double.fail_next("*", r"/api/jobs\?task_id=1", 429, times=2)
    assert get(cvat_double, "/api/tasks/1").status_code == 500
    assert get(cvat_double, "/api/tasks/1").status_code == 200
    throttled = get(cvat_double, "/api/jobs?task_id=1")
    assert (throttled.status_code, throttled.headers["Retry-After"]) == (429, "0")
    assert get(cvat_double, "/api/jobs?task_id=1").status_code == 429
    assert get(cvat_double, "/api/jobs?task_id=1").json()["count"] == 2

    auth = {"Authorization": f"Bearer {cvat_double.DEFAULT_TOKEN}"}
    export = f"{cvat_double.url}/api/jobs/2/dataset/export?format=COCO+1.0&save_images=true"
    cvat_double.export_polls_before_finish = 3
    cvat_double.fail_exports("disk full", times=1)
    rq_id = requests.post(export, headers=auth).json()["rq_id"]
    statuses = [get(cvat_double, f"/api/requests/{rq_id}").json() for _ in range(4)]
    assert [s["status"] for s in statuses] == ["started"] * 3 + ["failed"]
    assert statuses[-1]["message"] == "disk full"

    cvat_double.export_polls_before_finish = 0
    rq_id = requests.post(export, headers=auth).json()["rq_id"]
    final = get(cvat_double, f"/api/requests/{rq_id}").json()
    job_zip = zipfile.ZipFile(io.BytesIO(requests.get(final["result_url"], headers=auth).content))
    assert sorted(n for n in job_zip.namelist() if n.endswith(".jpg")) == [
        "images/default/frame_000002.jpg",
        "images/default/frame_000003.jpg",
    ]
    cvat_double.malformed_zip = True
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(io.BytesIO(requests.get(final["result_url"], headers=auth).content))


def test_version_override_deleted_frames_and_ground_truth(cvat_double: CVATDouble) -> None:
    cvat_double.version = "2.10.0"
    assert requests.get(cvat_double.url + "/api/server/about").json()["version"] == "2.10.0"
    cvat_double.add_task("t", frames=6, segment_size=3)
    cvat_double.delete_frames(1, [0, 4])
    gt = cvat_double.add_ground_truth_job(1, [1, 5])
    cvat_double.set_job(1, state="completed", stage="acceptance")
    assert get(cvat_double, "/api/tasks/1/data/meta").json()["deleted_frames"] == [0, 4]
    jobs = {j["id"]: j for j in get(cvat_double, "/api/jobs?task_id=1").json()["results"]}
    assert (jobs[gt]["type"], jobs[gt]["frame_count"]) == ("ground_truth", 2)
    assert (jobs[1]["state"], jobs[1]["stage"], jobs[2]["state"]) == ("completed", "acceptance", "new")
    assert get(cvat_double, "/api/tasks/1").json()["validation_mode"] == "gt"


def test_two_thousand_frames_are_regenerated_not_held(cvat_double: CVATDouble) -> None:
    task_id = cvat_double.add_task("big", frames=2000, segment_size=500)
    task = cvat_double.state.tasks[task_id]
    assert task.source.given is None and task.size == 2000
    assert len(cvat_double.job_ids(task_id)) == 4
    page = get(cvat_double, f"/api/tasks/{task_id}/data/meta").json()
    assert len(page["frames"]) == 2000
    assert get(cvat_double, "/api/jobs?page_size=2&page=2").json()["previous"] is not None


# ---------------------------------------------------------------------------------------------
# Webhooks (tests/cvat_double/webhooks.py)
# ---------------------------------------------------------------------------------------------


def test_webhooks_match_recordings(seeded: CVATDouble, session: requests.Session) -> None:
    """Create, events, ping (a real signed delivery to a listener), GET: as recorded."""
    import hashlib
    import hmac
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list[tuple[dict[str, str], bytes]] = []

    class Listener(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            received.append(
                (dict(self.headers.items()), self.rfile.read(int(self.headers["Content-Length"])))
            )
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    listener = ThreadingHTTPServer(("127.0.0.1", 0), Listener)
    threading.Thread(target=listener.serve_forever, daemon=True).start()
    try:
        request = recorded("webhook_create")["request"]
        body = {**request["body"], "target_url": f"http://127.0.0.1:{listener.server_address[1]}/cvat-hook"}
        created = session.post(f"{seeded.url}/api/webhooks", json=body)
        hook = assert_like_recording(created, "webhook_create")
        assert created.headers["Location"] == hook["url"]
        assert "secret" not in hook and hook["events"] == sorted(body["events"])

        events = session.get(f"{seeded.url}/api/webhooks/events", params={"type": "project"})
        assert (
            assert_like_recording(events, "webhook_events_project")
            == recorded("webhook_events_project")["body"]
        )

        for _ in range(2):  # the recorded ping came after another delivery: last_status is set
            ping = session.post(f"{seeded.url}/api/webhooks/{hook['id']}/ping")
        assert_like_recording(ping, "webhook_ping")
        assert ping.json()["status_code"] == 200

        headers, raw = received[-1]
        record = json.loads((RECORDED / "webhook_deliveries.jsonl").read_text().splitlines()[-1])
        assert headers["Content-Type"] == record["headers"]["Content-Type"]
        digest = hmac.new(b"fixture-secret", raw, hashlib.sha256).hexdigest()
        assert headers["X-Signature-256"] == f"sha256={digest}"
        assert_same_shape(json.loads(record["body_raw"]), json.loads(raw))

        assert_like_recording(session.get(f"{seeded.url}/api/webhooks/{hook['id']}"), "webhook")
        listed = session.get(f"{seeded.url}/api/webhooks", params={"target_url": body["target_url"]}).json()
        assert [h["id"] for h in listed["results"]] == [hook["id"]]
        assert (
            session.get(f"{seeded.url}/api/webhooks", params={"target_url": "http://x"}).json()["count"] == 0
        )
    finally:
        listener.shutdown()
        listener.server_close()
