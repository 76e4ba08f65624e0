"""A test double of the CVAT REST API (2.73), served over real HTTP for cvat-sdk and our hook.

Why a double and not mocks: the provider talks to CVAT through cvat-sdk, whose generated client
validates every response against CVAT's schema and drives the asynchronous export flow itself.
Only a server that answers like CVAT (field names, status codes, ``application/vnd.cvat+json``,
paginated lists, ``rq_id`` polling, zip downloads) exercises that code unmodified.
``tests/test_cvat_double_contract.py`` holds it against recordings of a real server.

Starting and stopping::

    with CVATDouble() as cvat:                 # or the ``cvat_double`` pytest fixture
        task_id = cvat.add_task("shapes", labels=["circle", "square"], frames=20, segment_size=10)
        client = cvat_sdk.make_client(cvat.url, access_token=cvat.DEFAULT_TOKEN)

Credentials: user ``CVATDouble.DEFAULT_USERNAME`` / ``DEFAULT_PASSWORD`` and the personal access
token ``DEFAULT_TOKEN`` exist. ``cvat.tokens[token] = username`` adds a token (valid both as
``Authorization: Bearer`` and legacy ``Token``); ``cvat.add_user(name, password, token=...)``
adds users; ``cvat.users[name].password = ...`` changes one. ``cvat.auth_schemes`` (a set of
"bearer", "token", "basic", "session") limits what the server accepts, e.g. to mimic an old
server without PATs. Wrong credentials give 401 ``{"detail": ...}``; password login
(``POST /api/auth/login``) sets ``sessionid``/``csrftoken`` cookies and unsafe methods then need
``X-CSRFToken``, as in CVAT.

Content (ids count from 1 per kind, like CVAT's database):
  - ``add_organization(slug, members=("admin",)) -> org_id``. Objects in an organization are
    visible to its members only; ``X-Organization``/``?org=``/``?org_id=`` naming an organization
    the caller is not a member of gives 403; ``?org=`` (empty) means the personal workspace.
  - ``add_project(name, labels, organization=None) -> project_id``
  - ``add_task(name, labels=None, frames=10, *, segment_size=0, project_id=None,
    organization=None, width=128, height=128, seed=0, max_objects=3, annotated=True,
    subset="") -> task_id``. ``subset`` ("Train", "Validation", ...) shows in the task and its
    project's ``task_subsets`` and is exported as CVAT does: COCO ``instances_<subset>.json`` and
    ``images/<subset>/``; CVAT XML the task meta's ``<subset>``, or in a project export each
    ``<image subset=...>`` under ``images/<subset>/`` (a name repeats across subsets, not within).
    ``frames`` is a count (synthetic frames regenerated from ``seed`` on demand, never all held
    in memory) or an iterable of ``demo_data.synthetic.SyntheticFrame``. Labels are names or
    ``{"name", "color", "attributes": [{"name", "input_type", "values", ...}]}``; a project's
    task uses the project's labels. One annotation job (state new, stage annotation) per segment;
    the frames' shapes become the task's annotations (source "manual").
  - ``add_ground_truth_job(task_id, frames) -> job_id``; ``set_job(job_id, state=, stage=)``;
    ``delete_frames(task_id, frames)``; ``annotations(task_id)`` (stored shapes, CVAT JSON);
    ``job_ids(task_id)``.
  - ``cvat.version = "2.10.0"`` changes what ``/api/server/about`` reports.

Exports: ``POST /api/{tasks|projects|jobs}/{id}/dataset/export?format=...`` answers 202 with a
CVAT-shaped ``rq_id``; each poll of ``/api/requests/{rq_id}`` is "started" for
``cvat.export_polls_before_finish`` polls (default 1, as recorded), then "finished" with
``result_url`` (or "failed"). The zip is written by ``demo_data.synthetic.write_export`` into a
temp file and streamed; a task export holds its non-deleted frames, a job export its own frames.
Only "COCO 1.0" and "CVAT for images 1.1" are written; other real formats end "failed", unknown
ones ("TFRecord 1.0") get CVAT's 400. ``cvat.background_exports = True`` writes each export in a
worker thread from the moment it is queued, and polls say "started" until it is done, as CVAT's
export workers do (for benchmarks of the wait; tests keep the deterministic poll count).

Frames: ``GET /api/tasks/{id}/data?type=frame&number=N[&quality=compressed|original]`` (and
``/api/jobs/{id}/data``, N a task frame number inside the job) answer the frame's JPEG as
``image/jpeg``; ``type=preview`` frame 0. Refusals as CVAT 2.73 words them: 400 for a bad
``type``, missing ``number``, bad ``quality`` or a frame outside the task/job. Chunks and context
images are not served.

Faults:
  - ``fail_next(method, path_regex, status, times=1, *, body=None, headers=None)``: the next
    matching requests get ``status`` (429/503 with ``Retry-After: 0``); ``method`` may be "*".
  - ``fail_exports(message="...", times=None)``: exports end "failed" with ``message``;
    ``fail_exports(None)`` heals.
  - ``cvat.malformed_zip = True``: downloads serve bytes that are not a zip.

Request log: ``cvat.log`` is a list of ``LoggedRequest(method, path, query, headers, body)``
with ``.header(name)``, ``.param(name)``, ``.json()``; ``cvat.requests_to(method, path_regex)``
filters it and ``cvat.clear_log()`` empties it.
"""

from .server import CVATDouble, LoggedRequest
from .state import ApiError

__all__ = ["ApiError", "CVATDouble", "LoggedRequest"]
