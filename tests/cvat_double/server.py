"""The CVAT double's HTTP side: a real server on 127.0.0.1, routes, auth, faults, request log.

``http.server`` is enough: it starts in milliseconds, needs no event loop, and gives full control
over status codes, headers and streamed bodies, which is what a contract with CVAT is about.
See the package docstring for how tests use it.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from demo_data.synthetic import DEFAULT_LABELS, EXPORT_FORMATS, SyntheticFrame, write_export

from .state import (
    JOB_STAGES,
    JOB_STATES,
    KNOWN_EXPORT_FORMATS,
    SHAPE_TYPES,
    ApiError,
    ExportRequest,
    FrameSource,
    Job,
    Project,
    State,
    Task,
    User,
    now_iso,
    rq_id_for,
)

CVAT_JSON = "application/vnd.cvat+json"
DEFAULT_PAGE_SIZE = 10
_CHUNK = 64 * 1024
_UNSET: Any = object()  # "no organization filter", as opposed to None ("personal workspace only")

# ---------------------------------------------------------------------------------------------
# Request log and faults
# ---------------------------------------------------------------------------------------------


@dataclass
class LoggedRequest:
    """One request as the double received it, for tests to assert on what a client sent."""

    method: str
    path: str  # decoded, without the query
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        """Header value, case-insensitively (HTTP header names are)."""
        lowered = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == lowered), None)

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class _Fault:
    method: str
    pattern: re.Pattern[str]
    status: int
    times: int
    body: Any
    headers: dict[str, str]

    def matches(self, method: str, target: str) -> bool:
        return self.times > 0 and self.method in ("*", method) and bool(self.pattern.search(target))


@dataclass
class _Call:
    """What a route handler sees: the parsed request plus who made it and in which org context."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    user: User | None = None
    org: Any = _UNSET  # _UNSET: all visible; None: personal workspace; int: that organization

    def param(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def int_param(self, name: str) -> int | None:
        value = self.param(name)
        if value in (None, ""):
            return None
        try:
            return int(value)
        except ValueError:
            raise ApiError(400, {name: ["A valid integer is required."]}) from None

    def json(self) -> Any:
        try:
            return json.loads(self.body) if self.body else {}
        except ValueError:
            raise ApiError(400, {"detail": "JSON parse error."}) from None


@dataclass
class _Response:
    status: int
    body: Any = None  # JSON-able; ignored when raw or file is set
    raw: bytes | None = None
    file: str | None = None
    content_type: str = CVAT_JSON
    headers: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# The double
# ---------------------------------------------------------------------------------------------


class CVATDouble:
    """A CVAT 2.73 look-alike on ``127.0.0.1:<ephemeral port>``; see the package docstring."""

    DEFAULT_USERNAME = "admin"
    DEFAULT_PASSWORD = "admin-password"
    DEFAULT_TOKEN = "cvat-double-pat"

    def __init__(self, *, version: str = "2.73.0") -> None:
        self.version = version
        self.auth_schemes: set[str] = {"bearer", "token", "basic", "session"}
        self.export_polls_before_finish = 1
        # Off: an export is written during the poll that finishes it (deterministic, for tests).
        # On: a worker thread writes it from the moment it is queued and polls report "started"
        # until it is done, as CVAT's export workers do: what a benchmark of waiting needs.
        self.background_exports = False
        self.malformed_zip = False
        self.log: list[LoggedRequest] = []
        self.lock = threading.RLock()
        self.state = State()
        admin = self.state.add_user(self.DEFAULT_USERNAME, self.DEFAULT_PASSWORD)
        self.state.tokens[self.DEFAULT_TOKEN] = admin.username
        self._faults: list[_Fault] = []
        self._export_failure: str | None = None
        self._export_failures_left: int | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._tmpdir: str | None = None
        self._api = _Api(self)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> CVATDouble:
        """Bind an ephemeral port and serve from a daemon thread."""
        self._tmpdir = tempfile.mkdtemp(prefix="cvat-double-")
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.double = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="cvat-double", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the socket and delete exported files."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> CVATDouble:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``: what a CVAT connection's host would hold."""
        if self._server is None:
            raise RuntimeError("the CVAT double is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- users, tokens, organizations -------------------------------------------------------

    @property
    def tokens(self) -> dict[str, str]:
        """Valid tokens (personal access tokens and legacy keys) -> username. Mutable."""
        return self.state.tokens

    @property
    def users(self) -> dict[str, User]:
        """username -> User (``.password`` is mutable)."""
        return self.state.users

    def add_user(
        self, username: str, password: str, *, token: str | None = None, superuser: bool = False
    ) -> int:
        with self.lock:
            user = self.state.add_user(username, password, superuser=superuser)
            if token is not None:
                self.state.tokens[token] = username
            return user.id

    def add_organization(self, slug: str, members: Iterable[str] = (DEFAULT_USERNAME,)) -> int:
        """An organization whose ``members`` (usernames) may use it via ``X-Organization``."""
        with self.lock:
            return self.state.add_organization(slug, members).id

    # -- content ----------------------------------------------------------------------------

    def add_project(
        self,
        name: str,
        labels: Sequence[str | dict[str, Any]] = DEFAULT_LABELS,
        *,
        organization: str | None = None,
    ) -> int:
        with self.lock:
            state = self.state
            project = Project(
                id=state.next_id("project"),
                name=name,
                owner=state.users[self.DEFAULT_USERNAME],
                organization_id=state.org_id_of(organization),
            )
            project.labels = state.make_labels(labels, "project_id", project.id)
            state.projects[project.id] = project
            return project.id

    def add_task(
        self,
        name: str,
        labels: Sequence[str | dict[str, Any]] | None = None,
        frames: int | Iterable[SyntheticFrame] = 10,
        *,
        segment_size: int = 0,
        project_id: int | None = None,
        organization: str | None = None,
        width: int = 128,
        height: int = 128,
        seed: int = 0,
        max_objects: int = 3,
        annotated: bool = True,
        subset: str = "",
    ) -> int:
        """Create a task with one annotation job per ``segment_size`` frames; return its id.

        ``subset`` is CVAT's task subset ("Train", "Validation", "Test", ...): exports write it
        as CVAT does (COCO ``instances_<subset>.json``, the CVAT XML meta or image attribute).

        ``frames`` as a count draws synthetic frames from ``seed`` (regenerated on demand,
        never all held); as an iterable of SyntheticFrame, they are kept as given. Their shapes
        become the task's annotations unless ``annotated`` is False.
        """
        with self.lock:
            state = self.state
            if project_id is not None and project_id not in state.projects:
                raise ValueError(f"no project {project_id}")
            if project_id is not None:
                org_id = state.projects[project_id].organization_id
            else:
                org_id = state.org_id_of(organization)
            task_id = state.next_id("task")
            own_labels = [] if project_id is not None else list(labels or DEFAULT_LABELS)
            task = Task(
                id=task_id,
                name=name,
                owner=state.users[self.DEFAULT_USERNAME],
                source=FrameSource(count=0),
                segment_size=segment_size,
                project_id=project_id,
                organization_id=org_id,
                labels=state.make_labels(own_labels, "task_id", task_id),
                subset=subset,
            )
            drawing = tuple(label.name for label in state.task_labels(task))
            task.source = self._frame_source(frames, drawing, width, height, seed, max_objects)
            state.tasks[task_id] = task
            state.segment_jobs(task)
            if annotated:
                for number in range(task.size):
                    state.shapes_from_synthetic(task, number, task.source.initial_shapes(number))
            return task_id

    @staticmethod
    def _frame_source(
        frames: int | Iterable[SyntheticFrame],
        labels: tuple[str, ...],
        width: int,
        height: int,
        seed: int,
        max_objects: int,
    ) -> FrameSource:
        if isinstance(frames, int):
            return FrameSource(frames, width, height, seed, max_objects, labels)
        given = list(frames)
        return FrameSource(len(given), given=given)

    def add_ground_truth_job(self, task_id: int, frames: Iterable[int]) -> int:
        """A ``type: ground_truth`` job over ``frames``, with its own (empty) annotations."""
        with self.lock:
            task = self._task(task_id)
            chosen = sorted(set(frames))
            if not chosen or chosen[0] < 0 or chosen[-1] >= task.size:
                raise ValueError(f"ground-truth frames must be within 0..{task.size - 1}")
            job = Job(id=self.state.next_id("job"), task_id=task_id, frames=chosen, type="ground_truth")
            self.state.jobs[job.id] = job
            task.job_ids.append(job.id)
            return job.id

    def set_job(self, job_id: int, *, state: str | None = None, stage: str | None = None) -> None:
        """Change a job's state/stage as an annotator would in the UI."""
        with self.lock:
            self._api.update_job(self._job(job_id), {"state": state, "stage": stage})

    def delete_frames(self, task_id: int, frames: Iterable[int]) -> None:
        """Mark frames deleted (they stay in the task, drop out of exports)."""
        with self.lock:
            task = self._task(task_id)
            task.deleted_frames.update(frames)
            task.updated = now_iso()

    def annotations(self, task_id: int) -> list[dict[str, Any]]:
        """A copy of the task's stored shapes (CVAT JSON), for assertions."""
        with self.lock:
            return [dict(shape) for shape in self._task(task_id).shapes]

    def job_ids(self, task_id: int) -> list[int]:
        with self.lock:
            return list(self._task(task_id).job_ids)

    # -- faults -----------------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        path_regex: str,
        status: int,
        times: int = 1,
        *,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next ``times`` matching requests with ``status`` instead of serving them.

        ``method`` may be ``"*"``; ``path_regex`` is searched in the decoded path plus ``?query``.
        429 and 503 carry ``Retry-After: 0`` unless ``headers`` say otherwise.
        """
        default_headers = {"Retry-After": "0"} if status in (429, 503) else {}
        self._faults.append(
            _Fault(
                method.upper(),
                re.compile(path_regex),
                status,
                times,
                body if body is not None else {"detail": f"Injected failure ({status})."},
                headers if headers is not None else default_headers,
            )
        )

    def fail_exports(self, message: str | None = "Injected export failure", times: int | None = None) -> None:
        """Make exports end ``failed`` with ``message`` (all, or the next ``times``); None heals."""
        with self.lock:
            self._export_failure = message
            self._export_failures_left = times

    def take_fault(self, method: str, target: str) -> _Fault | None:
        with self.lock:
            for fault in self._faults:
                if fault.matches(method, target):
                    fault.times -= 1
                    return fault
            return None

    def take_export_failure(self) -> str | None:
        with self.lock:
            if self._export_failure is None:
                return None
            if self._export_failures_left is not None:
                if self._export_failures_left <= 0:
                    return None
                self._export_failures_left -= 1
            return self._export_failure

    # -- request log ------------------------------------------------------------------------

    def requests_to(self, method: str | None = None, path_regex: str | None = None) -> list[LoggedRequest]:
        """Logged requests filtered by method and a regex searched in the path."""
        with self.lock:
            return [
                r
                for r in self.log
                if (method is None or r.method == method.upper())
                and (path_regex is None or re.search(path_regex, r.path))
            ]

    def clear_log(self) -> None:
        with self.lock:
            self.log.clear()

    # -- internals --------------------------------------------------------------------------

    def _task(self, task_id: int) -> Task:
        if task_id not in self.state.tasks:
            raise ValueError(f"no task {task_id}")
        return self.state.tasks[task_id]

    def _job(self, job_id: int) -> Job:
        if job_id not in self.state.jobs:
            raise ValueError(f"no job {job_id}")
        return self.state.jobs[job_id]

    def handle(self, call: _Call) -> _Response:
        """Log, inject faults, authenticate, route: the whole life of one request."""
        with self.lock:
            self.log.append(LoggedRequest(call.method, call.path, call.query, call.headers, call.body))
        query = "&".join(f"{k}={v}" for k, values in call.query.items() for v in values)
        fault = self.take_fault(call.method, call.path + ("?" + query if query else ""))
        if fault is not None:
            return _Response(fault.status, fault.body, headers=dict(fault.headers))
        try:
            return self._api.dispatch(call)
        except ApiError as error:
            return _Response(error.status, error.body)

    @property
    def tmpdir(self) -> str:
        assert self._tmpdir is not None
        return self._tmpdir


# ---------------------------------------------------------------------------------------------
# Routes
# ---------------------------------------------------------------------------------------------

_Route = tuple[str, re.Pattern[str], Callable[..., _Response], bool]


class _Api:
    """CVAT's REST endpoints, as far as the provider and cvat-sdk use them."""

    def __init__(self, double: CVATDouble) -> None:
        self.double = double
        self.state = double.state
        self.routes: list[_Route] = []
        add = self._add
        add("GET", r"/api/server/about", self.about, public=True)
        add("POST", r"/api/auth/login", self.login, public=True)
        add("POST", r"/api/auth/logout", self.logout)
        add("GET", r"/api/users/self", self.users_self)
        add("GET", r"/api/projects", self.list_projects)
        add("GET", r"/api/projects/(\d+)", self.get_project)
        add("GET", r"/api/tasks", self.list_tasks)
        add("GET", r"/api/tasks/(\d+)", self.get_task)
        add("GET", r"/api/tasks/(\d+)/data/meta", self.get_meta)
        add("PATCH", r"/api/tasks/(\d+)/data/meta", self.patch_meta)
        add("GET", r"/api/tasks/(\d+)/data", self.task_data)
        add("GET", r"/api/jobs", self.list_jobs)
        add("GET", r"/api/jobs/(\d+)", self.get_job)
        add("PATCH", r"/api/jobs/(\d+)", self.patch_job)
        add("GET", r"/api/jobs/(\d+)/data", self.job_data)
        add("GET", r"/api/labels", self.list_labels)
        add("GET", r"/api/labels/(\d+)", self.get_label)
        for verb in ("GET", "PATCH", "PUT", "DELETE"):
            add(verb, r"/api/(task|job)s/(\d+)/annotations", self.annotations)
        add("POST", r"/api/(task|project|job)s/(\d+)/dataset/export", self.start_export)
        add("GET", r"/api/(task|project|job)s/(\d+)/dataset/download", self.download)
        add("GET", r"/api/requests", self.list_requests)
        add("GET", r"/api/requests/(.+)", self.get_request)
        # ---- webhooks (tests/cvat_double/webhooks.py) ----
        from . import webhooks

        webhooks.register(self)
        # ---- end of webhooks ----

    def _add(
        self, method: str, pattern: str, handler: Callable[..., _Response], *, public: bool = False
    ) -> None:
        self.routes.append((method, re.compile(pattern + "/?"), handler, public))

    def dispatch(self, call: _Call) -> _Response:
        matched_path = False
        for method, pattern, handler, public in self.routes:
            match = pattern.fullmatch(call.path)
            if match is None:
                continue
            matched_path = True
            if method != call.method:
                continue
            if not public:
                self.authenticate(call)
                self.organization_context(call)
            with self.double.lock:
                return handler(call, *match.groups())
        if matched_path:
            raise ApiError(405, {"detail": f'Method "{call.method}" not allowed.'})
        raise ApiError(404)

    @property
    def base(self) -> str:
        return self.double.url

    # -- auth -------------------------------------------------------------------------------

    def authenticate(self, call: _Call) -> None:
        """DRF's order: Authorization header schemes, then the session cookie (with CSRF)."""
        schemes = self.double.auth_schemes
        header = next((v for k, v in call.headers.items() if k.lower() == "authorization"), "")
        scheme, _, credential = header.partition(" ")
        scheme = scheme.lower()
        if header and scheme in schemes and scheme in ("bearer", "token"):
            username = self.state.tokens.get(credential.strip())
            if username is None or username not in self.state.users:
                raise ApiError(401, {"detail": "Invalid token."})
            call.user = self.state.users[username]
            return
        if header and scheme == "basic" and "basic" in schemes:
            call.user = self._basic_user(credential)
            return
        if "session" in schemes and self._session_user(call):
            return
        if header and scheme in ("bearer", "token", "basic"):
            raise ApiError(401, {"detail": "Invalid token."})
        raise ApiError(401, {"detail": "Authentication credentials were not provided."})

    def _basic_user(self, credential: str) -> User:
        try:
            username, _, password = base64.b64decode(credential).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise ApiError(
                401, {"detail": "Invalid basic header. Credentials not correctly base64 encoded."}
            ) from None
        user = self.state.users.get(username)
        if user is None or user.password != password:
            raise ApiError(401, {"detail": "Invalid username/password."})
        return user

    def _session_user(self, call: _Call) -> bool:
        cookie = SimpleCookie(next((v for k, v in call.headers.items() if k.lower() == "cookie"), ""))
        session = cookie.get("sessionid")
        if session is None or session.value not in self.state.sessions:
            return False
        if call.method not in ("GET", "HEAD", "OPTIONS"):
            csrf = cookie.get("csrftoken")
            sent = next((v for k, v in call.headers.items() if k.lower() == "x-csrftoken"), None)
            if csrf is None or sent != csrf.value:
                raise ApiError(403, {"detail": "CSRF Failed: CSRF token missing or incorrect."})
        call.user = self.state.users[self.state.sessions[session.value]]
        return True

    def organization_context(self, call: _Call) -> None:
        """``X-Organization`` (slug), ``?org=`` (slug, empty: personal) or ``?org_id=``."""
        slug = next((v for k, v in call.headers.items() if k.lower() == "x-organization"), None)
        if slug is None:
            slug = call.param("org")
        org_id = call.int_param("org_id")
        if org_id is not None:
            org = self.state.org_by_id(org_id)
        elif slug is None:
            return
        elif slug == "":
            call.org = None
            return
        else:
            org = self.state.organizations.get(slug)
            if org is None:  # as CVAT's iam get_organization: an unknown slug is a 404
                raise ApiError(404, {"detail": f"{slug} organization does not exist."})
        if org is None or call.user is None or call.user.username not in org.members:
            raise ApiError(403, {"detail": "You do not have permission to perform this action."})
        call.org = org.id

    def visible(self, call: _Call, org_id: int | None) -> bool:
        """Whether an object of organization ``org_id`` shows in this call's lists."""
        if org_id is not None:
            org = self.state.org_by_id(org_id)
            if org is None or call.user is None or call.user.username not in org.members:
                return False
        return call.org is _UNSET or call.org == org_id

    def check_access(self, call: _Call, org_id: int | None) -> None:
        """Single objects: 403 outside the user's organizations, 404 outside the context."""
        if org_id is not None:
            org = self.state.org_by_id(org_id)
            if org is None or call.user is None or call.user.username not in org.members:
                raise ApiError(403, {"detail": "You do not have permission to perform this action."})
        if call.org is not _UNSET and call.org != org_id:
            raise ApiError(404)

    # -- pagination -------------------------------------------------------------------------

    def page(self, call: _Call, items: list[Any], render: Callable[[Any], dict[str, Any]]) -> _Response:
        """DRF's page-number pagination: ``count, next, previous, results``."""
        page = call.int_param("page") or 1
        size = call.int_param("page_size") or DEFAULT_PAGE_SIZE
        pages = max(1, -(-len(items) // size))
        if page < 1 or page > pages:
            raise ApiError(404, {"detail": "Invalid page."})
        chunk = items[(page - 1) * size : page * size]

        def link(number: int) -> str:
            query = {k: v for k, v in call.query.items() if k != "page"}
            parts = [f"{k}={v}" for k, values in query.items() for v in values]
            if number != 1 or query.get("page"):
                parts.append(f"page={number}")
            return f"{self.base}{call.path}" + ("?" + "&".join(parts) if parts else "")

        return _Response(
            200,
            {
                "count": len(items),
                "next": link(page + 1) if page < pages else None,
                "previous": link(page - 1) if page > 1 else None,
                "results": [render(item) for item in chunk],
            },
        )

    # -- server and users -------------------------------------------------------------------

    def about(self, call: _Call) -> _Response:
        return _Response(
            200,
            {
                "name": "Computer Vision Annotation Tool",
                "description": "CVAT test double (airflow-provider-cvat tests).",
                "version": self.double.version,
                "logo_url": f"{self.base}/static/logo.svg",
                "subtitle": "Open Data Annotation Platform",
            },
        )

    def login(self, call: _Call) -> _Response:
        body = call.json()
        name = body.get("username") or body.get("email") or ""
        user = self.state.users.get(name) or next(
            (u for u in self.state.users.values() if u.email and u.email == name), None
        )
        if "session" not in self.double.auth_schemes or user is None or user.password != body.get("password"):
            raise ApiError(400, {"non_field_errors": ["Unable to log in with provided credentials."]})
        session, csrf = secrets.token_hex(16), secrets.token_hex(16)
        self.state.sessions[session] = user.username
        cookies = (
            f"csrftoken={csrf}; Path=/; SameSite=Lax, sessionid={session}; HttpOnly; Path=/; SameSite=Lax"
        )
        return _Response(200, {"key": secrets.token_hex(20)}, headers={"Set-Cookie": cookies})

    def logout(self, call: _Call) -> _Response:
        cookie = SimpleCookie(next((v for k, v in call.headers.items() if k.lower() == "cookie"), ""))
        if "sessionid" in cookie:
            self.state.sessions.pop(cookie["sessionid"].value, None)
        return _Response(200, {"detail": "Successfully logged out."})

    def users_self(self, call: _Call) -> _Response:
        assert call.user is not None
        return _Response(200, call.user.to_json(self.base))

    # -- projects ---------------------------------------------------------------------------

    def project_json(self, project: Project) -> dict[str, Any]:
        tasks = [t for t in self.state.tasks.values() if t.project_id == project.id]
        return {
            "url": f"{self.base}/api/projects/{project.id}",
            "id": project.id,
            "name": project.name,
            "owner": project.owner.brief(self.base),
            "assignee": None,
            "guide_id": None,
            "bug_tracker": "",
            "created_date": project.created,
            "updated_date": project.created,
            "status": "annotation",
            "dimension": "2d" if tasks else None,
            "organization": project.organization_id,
            "organization_id": project.organization_id,
            "target_storage": None,
            "source_storage": None,
            "tasks": {"count": len(tasks), "url": f"{self.base}/api/tasks?project_id={project.id}"},
            "labels": {"url": f"{self.base}/api/labels?project_id={project.id}"},
            "assignee_updated_date": None,
            "task_subsets": sorted({t.subset for t in tasks if t.subset}),
        }

    def project(self, call: _Call, project_id: int) -> Project:
        project = self.state.projects.get(project_id)
        if project is None:
            raise ApiError(404)
        self.check_access(call, project.organization_id)
        return project

    def list_projects(self, call: _Call) -> _Response:
        items = [p for p in self.state.projects.values() if self.visible(call, p.organization_id)]
        items.sort(key=lambda p: -p.id)
        return self.page(call, items, self.project_json)

    def get_project(self, call: _Call, project_id: str) -> _Response:
        return _Response(200, self.project_json(self.project(call, int(project_id))))

    # -- tasks ------------------------------------------------------------------------------

    def task_json(self, task: Task) -> dict[str, Any]:
        jobs = self.state.task_jobs(task)
        project = self.state.projects.get(task.project_id) if task.project_id else None
        if jobs and all(j.stage == "acceptance" and j.state == "completed" for j in jobs):
            status = "completed"
        elif any(j.stage == "validation" for j in jobs):
            status = "validation"
        else:
            status = "annotation"
        return {
            "url": f"{self.base}/api/tasks/{task.id}",
            "id": task.id,
            "name": task.name,
            "project_id": task.project_id,
            "project_name": project.name if project else None,
            "owner": task.owner.brief(self.base),
            "assignee": None,
            "bug_tracker": "",
            "created_date": task.created,
            "updated_date": task.updated,
            "overlap": 0,
            "segment_size": task.segment_size or task.size,
            "status": status,
            "data_chunk_size": 72,
            "data_original_chunk_type": "imageset",
            "data_compressed_chunk_type": "imageset",
            "data_cloud_storage_id": None,
            "guide_id": None,
            "size": task.size,
            "image_quality": 70,
            "data": task.id,
            "dimension": "2d",
            "mode": "annotation",
            "media_type": "image",
            "subset": task.subset,
            "organization_id": task.organization_id,
            "organization": task.organization_id,
            "target_storage": None,
            "source_storage": None,
            "jobs": {
                "count": len(jobs),
                "completed": sum(j.state == "completed" for j in jobs),
                "validation": sum(j.stage == "validation" for j in jobs),
                "url": f"{self.base}/api/jobs?task_id={task.id}",
            },
            "labels": {"url": f"{self.base}/api/labels?task_id={task.id}"},
            "assignee_updated_date": None,
            "validation_mode": "gt" if any(j.type == "ground_truth" for j in jobs) else None,
            "consensus_enabled": False,
        }

    def task(self, call: _Call, task_id: int) -> Task:
        task = self.state.tasks.get(task_id)
        if task is None:
            raise ApiError(404)
        self.check_access(call, task.organization_id)
        return task

    def list_tasks(self, call: _Call) -> _Response:
        project_id, name = call.int_param("project_id"), call.param("name")
        items = [
            t
            for t in self.state.tasks.values()
            if self.visible(call, t.organization_id)
            and (project_id is None or t.project_id == project_id)
            and (name is None or t.name == name)
        ]
        items.sort(key=lambda t: -t.id)
        return self.page(call, items, self.task_json)

    def get_task(self, call: _Call, task_id: str) -> _Response:
        return _Response(200, self.task_json(self.task(call, int(task_id))))

    def meta_json(self, task: Task) -> dict[str, Any]:
        frames = []
        for number in range(task.size):
            width, height = task.source.size(number)
            frames.append(
                {
                    "width": width,
                    "height": height,
                    "name": task.source.name(number),
                    "related_files": 0,
                    "has_related_context": False,
                }
            )
        return {
            "chapters": None,
            "chunks_updated_date": task.created,
            "chunk_size": 72,
            "size": task.size,
            "image_quality": 70,
            "start_frame": 0,
            "stop_frame": max(task.size - 1, 0),
            "frame_filter": "",
            "frames": frames,
            "deleted_frames": sorted(task.deleted_frames),
            "included_frames": None,
            "storage": "local",
            "cloud_storage_id": None,
        }

    def get_meta(self, call: _Call, task_id: str) -> _Response:
        return _Response(200, self.meta_json(self.task(call, int(task_id))))

    def patch_meta(self, call: _Call, task_id: str) -> _Response:
        task = self.task(call, int(task_id))
        deleted = call.json().get("deleted_frames")
        if deleted is not None:
            if any(not isinstance(f, int) or not 0 <= f < task.size for f in deleted):
                raise ApiError(400, {"deleted_frames": ["Invalid frame numbers."]})
            task.deleted_frames = set(deleted)
            task.updated = now_iso()
        return _Response(200, self.meta_json(task))

    # -- media ------------------------------------------------------------------------------

    def task_data(self, call: _Call, task_id: str) -> _Response:
        """``GET /api/tasks/{id}/data?type=frame&number=N[&quality=compressed|original]``."""
        task = self.task(call, int(task_id))
        number = self._data_request(call)
        if number is None:
            return self._frame(task, 0)
        if not 0 <= number < task.size:
            # CVAT's TaskFrameProvider: a ValidationError answered as a bare JSON string.
            raise ApiError(
                400,
                f"Invalid frame '{number}'. The frame number should be in the [0, {task.size}] range",
            )
        return self._frame(task, number)

    def job_data(self, call: _Call, job_id: str) -> _Response:
        """``GET /api/jobs/{id}/data?type=frame&number=N``: N is a task frame number inside the job."""
        job = self.job(call, int(job_id))
        task = self.state.tasks[job.task_id]
        number = self._data_request(call)
        if number is None:
            return self._frame(task, job.frames[0])
        if number not in job.frames:
            raise ApiError(400, f"Incorrect requested frame number: {number}")
        return self._frame(task, number)

    @staticmethod
    def _data_request(call: _Call) -> int | None:
        """Validate like CVAT's ``_DataGetter``: the frame number, or None for ``type=preview``.

        The double serves frames and previews; ``chunk`` and ``context_image`` (valid in CVAT) are
        refused with a 400 that says so.
        """
        kind = call.param("type")
        if kind not in ("chunk", "frame", "preview", "context_image"):
            raise ApiError(400, ["Data type not specified or has wrong value"])
        if kind in ("chunk", "context_image"):
            raise ApiError(400, {"detail": f"The CVAT double does not serve type={kind}"})
        if kind == "frame" and call.param("number") is None:
            raise ApiError(400, ["Number is not specified"])
        if call.param("quality", "compressed") not in ("compressed", "original"):
            raise ApiError(400, ["Wrong quality value"])
        return call.int_param("number") if kind == "frame" else None

    @staticmethod
    def _frame(task: Task, number: int) -> _Response:
        """The frame's image bytes with the type CVAT guesses from the file name (``image/jpeg``).

        Both qualities serve the same JPEG: a real server's ``compressed`` frame is re-encoded at
        the task's image quality, so only its bytes would differ. Deleted frames are served, as
        in CVAT (they stay in the task's data).
        """
        frame = task.source.image(number)
        mime = mimetypes.guess_type(frame.name)[0] or "image/jpeg"
        return _Response(200, raw=frame.jpeg, content_type=mime)

    # -- jobs -------------------------------------------------------------------------------

    def job_json(self, job: Job) -> dict[str, Any]:
        task = self.state.tasks[job.task_id]
        project = self.state.projects.get(task.project_id) if task.project_id else None
        return {
            "url": f"{self.base}/api/jobs/{job.id}",
            "id": job.id,
            "task_id": task.id,
            "task_name": task.name,
            "project_id": task.project_id,
            "project_name": project.name if project else None,
            "assignee": None,
            "guide_id": None,
            "dimension": "2d",
            "mode": "annotation",
            "media_type": "image",
            "bug_tracker": None,
            "status": job.status,
            "stage": job.stage,
            "state": job.state,
            "frame_count": len(job.frames),
            "start_frame": job.frames[0] if job.frames else 0,
            "stop_frame": job.frames[-1] if job.frames else 0,
            "data_chunk_size": 72,
            "data_compressed_chunk_type": "imageset",
            "data_original_chunk_type": "imageset",
            "created_date": job.created,
            "updated_date": job.updated,
            "issues": {"url": f"{self.base}/api/issues?job_id={job.id}", "count": 0},
            "labels": {"url": f"{self.base}/api/labels?job_id={job.id}"},
            "type": job.type,
            "organization": task.organization_id,
            "target_storage": None,
            "source_storage": None,
            "assignee_updated_date": None,
            "parent_job_id": None,
            "replicas_count": 0,
            "consensus_replicas": 0,
        }

    def job(self, call: _Call, job_id: int) -> Job:
        job = self.state.jobs.get(job_id)
        if job is None:
            raise ApiError(404)
        self.check_access(call, self.state.tasks[job.task_id].organization_id)
        return job

    def list_jobs(self, call: _Call) -> _Response:
        task_id, project_id = call.int_param("task_id"), call.int_param("project_id")
        wanted = {name: call.param(name) for name in ("type", "stage", "state")}
        items = []
        for job in self.state.jobs.values():
            task = self.state.tasks[job.task_id]
            if not self.visible(call, task.organization_id):
                continue
            if task_id is not None and job.task_id != task_id:
                continue
            if project_id is not None and task.project_id != project_id:
                continue
            if any(value is not None and getattr(job, name) != value for name, value in wanted.items()):
                continue
            items.append(job)
        items.sort(key=lambda j: -j.id)
        return self.page(call, items, self.job_json)

    def get_job(self, call: _Call, job_id: str) -> _Response:
        return _Response(200, self.job_json(self.job(call, int(job_id))))

    def patch_job(self, call: _Call, job_id: str) -> _Response:
        job = self.job(call, int(job_id))
        self.update_job(job, call.json())
        return _Response(200, self.job_json(job))

    def update_job(self, job: Job, changes: dict[str, Any]) -> None:
        """Validate like CVAT (choice fields), then apply; 400 names the bad field."""
        for name, choices in (("state", JOB_STATES), ("stage", JOB_STAGES)):
            value = changes.get(name)
            if value is not None and value not in choices:
                raise ApiError(400, {name: [f'"{value}" is not a valid choice.']})
        if changes.get("state") is not None:
            job.state = changes["state"]
        if changes.get("stage") is not None:
            job.stage = changes["stage"]
        job.updated = now_iso()
        self.state.tasks[job.task_id].updated = job.updated

    # -- labels -----------------------------------------------------------------------------

    def list_labels(self, call: _Call) -> _Response:
        task_id, project_id, job_id = (call.int_param(n) for n in ("task_id", "project_id", "job_id"))
        if job_id is not None:
            labels = self.state.task_labels(self.task(call, self.job(call, job_id).task_id))
        elif task_id is not None:
            labels = self.state.task_labels(self.task(call, task_id))
        elif project_id is not None:
            labels = self.project(call, project_id).labels
        else:
            labels = [label for t in self.state.tasks.values() for label in t.labels]
            labels += [label for p in self.state.projects.values() for label in p.labels]
        return self.page(call, sorted(labels, key=lambda label: label.id), lambda label: label.to_json())

    def get_label(self, call: _Call, label_id: str) -> _Response:
        owners = [*self.state.tasks.values(), *self.state.projects.values()]
        for label in (label for owner in owners for label in owner.labels):
            if label.id == int(label_id):
                return _Response(200, label.to_json())
        raise ApiError(404)

    # -- annotations ------------------------------------------------------------------------

    def annotations(self, call: _Call, kind: str, object_id: str) -> _Response:
        """GET, PATCH ?action=create|update|delete, PUT and DELETE on task or job annotations."""
        if kind == "task":
            task, job = self.task(call, int(object_id)), None
            frames: set[int] = set(range(task.size))
        else:
            job = self.job(call, int(object_id))
            task, frames = self.state.tasks[job.task_id], set(job.frames)
        store = job.own_shapes if job is not None and job.type == "ground_truth" else task.shapes
        in_scope = [s for s in store if s["frame"] in frames]
        if call.method == "GET":
            return _Response(200, _annotation_doc(sorted(in_scope, key=lambda s: (s["frame"], s["id"]))))
        if call.method == "DELETE":
            store[:] = [s for s in store if s["frame"] not in frames]
            return _Response(204, raw=b"")
        shapes = self._validated_shapes(call.json(), task, frames)
        action = call.param("action") if call.method == "PATCH" else "put"
        if action == "create":
            created = [self.state.complete_shape({**s, "id": None}) for s in shapes]
            store.extend(created)
            result = created
        elif action == "update":
            result = self._update_shapes(store, shapes)
        elif action == "delete":
            ids = {s.get("id") for s in shapes}
            store[:] = [s for s in store if s["id"] not in ids]
            result = shapes
        elif action == "put":
            store[:] = [s for s in store if s["frame"] not in frames]
            result = [self.state.complete_shape(s) for s in shapes]
            store.extend(result)
        else:
            raise ApiError(400, ["Please specify a correct 'action' for the request"])
        task.updated = now_iso()
        return _Response(200, _annotation_doc(result))

    def _validated_shapes(self, body: Any, task: Task, frames: set[int]) -> list[dict[str, Any]]:
        if not isinstance(body, dict) or not isinstance(body.get("shapes", []), list):
            raise ApiError(400, {"shapes": ["Expected a list of items."]})
        label_ids = {label.id for label in self.state.task_labels(task)}
        shapes = body.get("shapes", [])
        for shape in shapes:
            if shape.get("label_id") not in label_ids:
                raise ApiError(400, {"shapes": [{"label_id": ["Unknown label."]}]})
            if shape.get("type") not in SHAPE_TYPES:
                raise ApiError(400, {"shapes": [{"type": [f'"{shape.get("type")}" is not a valid choice.']}]})
            if shape.get("frame") not in frames:
                raise ApiError(400, [f"The frame #{shape.get('frame')} is out of the segment range"])
        return shapes

    def _update_shapes(
        self, store: list[dict[str, Any]], shapes: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        by_id = {s["id"]: i for i, s in enumerate(store)}
        updated = []
        for shape in shapes:
            if shape.get("id") not in by_id:
                raise ApiError(400, {"shapes": [{"id": ["Object does not exist."]}]})
            merged = self.state.complete_shape({**store[by_id[shape["id"]]], **shape})
            store[by_id[shape["id"]]] = merged
            updated.append(merged)
        return updated

    # -- exports ----------------------------------------------------------------------------

    def start_export(self, call: _Call, target: str, object_id: str) -> _Response:
        """202 with an ``rq_id``; the work happens when the request is polled (deterministic)."""
        fmt = call.param("format")
        if not fmt or fmt not in KNOWN_EXPORT_FORMATS:
            raise ApiError(400, ["Unknown format specified for the request"])
        if call.param("location") == "cloud_storage":
            raise ApiError(400, ["The CVAT double does not support cloud storage"])
        save_images = (call.param("save_images") or "false").lower() in ("true", "1", "yes")
        task_id = project_id = job_id = None
        if target == "task":
            task_id = self.task(call, int(object_id)).id
            org_id = self.state.tasks[task_id].organization_id
        elif target == "job":
            job = self.job(call, int(object_id))
            job_id, task_id = job.id, job.task_id
            org_id = self.state.tasks[task_id].organization_id
        else:
            project_id = self.project(call, int(object_id)).id
            org_id = self.state.projects[project_id].organization_id
        assert call.user is not None
        rq_id = rq_id_for(target, int(object_id), call.user.id, fmt, save_images)
        self.state.requests[rq_id] = ExportRequest(
            rq_id=rq_id,
            target=target,
            target_id=int(object_id),
            format=fmt,
            save_images=save_images,
            owner=call.user,
            org_id=org_id,
            task_id=task_id,
            project_id=project_id,
            job_id=job_id,
            polls_left=self.double.export_polls_before_finish,
            fail_message=self.double.take_export_failure(),
        )
        if self.double.background_exports:
            self._start_worker(self.state.requests[rq_id])
        return _Response(202, {"rq_id": rq_id})

    def _start_worker(self, request: ExportRequest) -> None:
        """Write the export in a thread; the content is taken now, under the lock, as CVAT does."""
        request.status, request.started = "started", now_iso()
        if request.fail_message is not None or request.format not in EXPORT_FORMATS:
            return  # fails at its next poll, as without a worker
        content = self._export_content(request)

        def work() -> None:
            try:
                self._write_result(request, content)
            except Exception as error:  # the double's bug, reported as CVAT would: a failed request
                request.fail_message = f"CVAT double export error: {error!r}"

        request.worker = threading.Thread(target=work, name=f"cvat-export-{request.target_id}", daemon=True)
        request.worker.start()

    def export_request(self, call: _Call, rq_id: str) -> ExportRequest:
        request = self.state.requests.get(rq_id)
        if request is None or call.user is None or request.owner.id != call.user.id:
            raise ApiError(404)
        return request

    def get_request(self, call: _Call, rq_id: str) -> _Response:
        request = self.export_request(call, rq_id)
        if request.status in ("queued", "started"):
            self._advance(request)
        return _Response(
            200,
            request.to_json(self.base),
            headers={"Cache-Control": "max-age=0, no-cache, no-store, must-revalidate, private"},
        )

    def list_requests(self, call: _Call) -> _Response:
        assert call.user is not None
        filters = {name: call.param(name) for name in ("action", "target", "target_id", "status", "format")}
        items = []
        for request in self.state.requests.values():
            fields = {
                "action": "export",
                "target": request.target,
                "target_id": str(request.target_id),
                "status": request.status,
                "format": request.format,
            }
            if request.owner.id == call.user.id and all(
                v is None or fields[k] == v for k, v in filters.items()
            ):
                items.append(request)
        items.sort(key=lambda r: r.created, reverse=True)
        return self.page(call, items, lambda r: r.to_json(self.base))

    def _advance(self, request: ExportRequest) -> None:
        """One poll's worth of progress: ``started`` for n polls, then finished or failed.

        With background exports: ``started`` while the worker thread writes, then finished.
        """
        if request.started is None:
            request.started = now_iso()
        if request.worker is not None:
            if not request.worker.is_alive():
                failed = request.fail_message is not None
                request.status = "failed" if failed else "finished"
                request.message = request.fail_message or ""
                request.finished = now_iso()
            return
        if request.polls_left > 0:
            request.polls_left -= 1
            request.status = "started"
            return
        if request.fail_message is not None:
            request.status, request.message = "failed", request.fail_message
        elif request.format not in EXPORT_FORMATS:
            request.status = "failed"
            request.message = f"The CVAT double writes only {', '.join(EXPORT_FORMATS)}, not {request.format}"
        else:
            self._write_result(request)
            request.status = "finished"
        request.finished = now_iso()

    def _write_result(self, request: ExportRequest, content: tuple | None = None) -> None:
        """Stream the export zip to a temp file (images regenerated one at a time)."""
        path = os.path.join(self.double.tmpdir, f"{uuid.uuid4().hex}.zip")
        frames, labels, name, task_id, segments = content or self._export_content(request)
        with open(path, "wb") as fileobj:
            write_export(
                frames,
                labels,
                fileobj,
                format=request.format,
                save_images=request.save_images,
                task_name=name,
                task_id=task_id,
                segments=segments,
                project=request.target == "project",
            )
        stamp = time.strftime("%Y_%m_%d_%H_%M_%S", time.gmtime())
        kind = "dataset" if request.save_images else "annotations"
        request.result_path = path
        request.filename = f"{request.target}_{request.target_id}_{kind}_{stamp}_{request.format.lower()}.zip"

    def _export_content(
        self, request: ExportRequest
    ) -> tuple[Iterable[SyntheticFrame], list[str], str, int, list]:
        state = self.state
        if request.target == "project":
            project = state.projects[request.target_id]
            tasks = sorted(
                (t for t in state.tasks.values() if t.project_id == project.id), key=lambda t: t.id
            )
            frames = _renumbered((t.id, self._task_frames(t)) for t in tasks)
            return frames, [label.name for label in project.labels], project.name, project.id, []
        task = state.tasks[request.task_id or 0]
        labels = [label.name for label in state.task_labels(task)]
        segments = [
            (j.id, j.frames[0], j.frames[-1]) for j in state.task_jobs(task) if j.type == "annotation"
        ]
        if request.target == "job":
            job = state.jobs[request.target_id]
            store = job.own_shapes if job.type == "ground_truth" else task.shapes
            numbers = [f for f in job.frames if f not in task.deleted_frames]
            frames = state.export_frames(task, numbers, list(store))
            return frames, labels, task.name, task.id, [s for s in segments if s[0] == job.id]
        return self._task_frames(task), labels, task.name, task.id, segments

    def _task_frames(self, task: Task) -> Iterable[SyntheticFrame]:
        numbers = [f for f in range(task.size) if f not in task.deleted_frames]
        return self.state.export_frames(task, numbers, list(task.shapes))

    def download(self, call: _Call, target: str, object_id: str) -> _Response:
        request = self.export_request(call, call.param("rq_id") or "")
        if request.target != target or request.target_id != int(object_id):
            raise ApiError(404)
        if request.status != "finished" or request.result_path is None:
            raise ApiError(400, ["The export is not finished"])
        headers = {"Content-Disposition": f'attachment; filename="{request.filename}"'}
        if self.double.malformed_zip:
            return _Response(
                200,
                raw=b"<html>this is not a zip</html>" * 8,
                content_type="application/zip",
                headers=headers,
            )
        return _Response(200, file=request.result_path, content_type="application/zip", headers=headers)


def _annotation_doc(shapes: list[dict[str, Any]]) -> dict[str, Any]:
    return {"version": 0, "tags": [], "shapes": shapes, "tracks": [], "intervals": []}


def _renumbered(groups: Iterable[tuple[int, Iterable[SyntheticFrame]]]) -> Iterable[SyntheticFrame]:
    """A project export numbers frames across its tasks; a name seen before gets a task prefix.

    Names are per subset: each subset is its own folder, so two subsets may hold the same name.
    """
    number, seen = 0, set()
    for task_id, group in groups:
        for frame in group:
            if (frame.subset, frame.name) in seen:
                frame.name = f"task_{task_id}_{frame.name}"
            seen.add((frame.subset, frame.name))
            frame.frame = number
            number += 1
            yield frame


# ---------------------------------------------------------------------------------------------
# HTTP plumbing
# ---------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like uvicorn; every answer has a Content-Length
    server_version = "uvicorn"
    sys_version = ""
    timeout = 30  # an idle keep-alive connection ends its thread

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._serve()

    do_POST = do_PATCH = do_PUT = do_DELETE = do_HEAD = do_GET  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the double keeps its own request log."""

    def _serve(self) -> None:
        double: CVATDouble = self.server.double  # type: ignore[attr-defined]
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        call = _Call(
            method=self.command,
            path=unquote(parts.path),
            query=parse_qs(parts.query, keep_blank_values=True),
            headers=dict(self.headers.items()),
            body=self.rfile.read(length) if length else b"",
        )
        try:
            response = double.handle(call)
        except Exception as error:  # a bug in the double must still answer, not hang a client
            response = _Response(500, {"detail": f"CVAT double error: {error!r}"})
        self._write(response)

    def _write(self, response: _Response) -> None:
        if response.file is not None:
            size = os.path.getsize(response.file)
        else:
            payload = response.raw if response.raw is not None else _encode(response.body)
            size = len(payload)
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(size))
        self.send_header("X-Request-Id", str(uuid.uuid4()))
        self.send_header("Vary", "Accept, Accept-Encoding, Origin, Cookie")
        for name, value in response.headers.items():
            for single in value.split(", ") if name.lower() == "set-cookie" else [value]:
                self.send_header(name, single)
        self.end_headers()
        if self.command == "HEAD":
            return
        if response.file is None:
            self.wfile.write(payload)
            return
        with open(response.file, "rb") as source:
            while chunk := source.read(_CHUNK):
                self.wfile.write(chunk)


def _encode(body: Any) -> bytes:
    return b"" if body is None else json.dumps(body).encode()
