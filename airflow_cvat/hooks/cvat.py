"""CVATHook: the one place that talks to a CVAT server.

Built on cvat-sdk so that authentication, organizations and the API's models follow CVAT's own
client. What this layer adds is what an Airflow task needs: retries with backoff on transient
faults only, errors that name the server, the resource, CVAT's answer and what to do, a refusal
of servers too old for the asynchronous export API, and a download that streams.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowException

from airflow_cvat.cvat_policy import (
    IDEMPOTENT_METHODS,
    RETRY_STATUSES,  # noqa: F401 - the triggers read the policy's statuses from here too
    Credentials,
    parse_verify_ssl,
    retry_settings,
)
from airflow_cvat.cvat_policy import error_detail as _cvat_detail

if TYPE_CHECKING:
    from cvat_sdk import Client

#: First CVAT release with the asynchronous export flow (POST .../dataset/export + /api/requests).
MIN_SERVER_VERSION = (2, 16)
DOWNLOAD_CHUNK = 1 << 20
#: First wait between status polls of an export. Small exports finish in well under a second, so
#: polling at the configured period from the start wastes most of it.
FIRST_POLL_INTERVAL = 0.1
#: Each wait is this much longer than the last, up to the configured period. A poll then comes at
#: most 30% of the time already waited after the export finished (doubling allows 100%: a 2 s
#: export could be seen at 3.1 s), and reaching a 2 s period still takes only a dozen polls.
POLL_GROWTH = 1.3

EXPORT_RESOURCES = ("tasks", "jobs", "projects")


class CVATError(AirflowException):
    """A CVAT server refused or failed a request; the message says what to do about it."""


class CVATExportTimeout(CVATError):
    """CVAT did not finish preparing an export in time."""


def _hint(status: int, resource: str) -> str:
    if status == 401:
        return (
            "the credentials were rejected: create a new personal access token in CVAT "
            "(avatar menu → Settings → Security → access tokens) and store it as the connection's password"
        )
    if status == 403:
        return (
            f"the user has no permission for {resource}: ask the owner or an organization admin for access, "
            "or set the right Organization in the connection"
        )
    if status == 404:
        return (
            f"{resource} does not exist on this server, or belongs to an organization the connection "
            "does not select: check the id and the connection's Organization field"
        )
    if status == 429 or status >= 500:
        return "the server kept failing after retries: check CVAT's health and logs, then retry the task"
    return "check the request's arguments"


def server_url_of(host: str | None, conn_id: str) -> str:
    """The connection's Host as a URL with a scheme (https unless given), without a trailing slash."""
    host = (host or "").rstrip("/")
    if not host:
        raise CVATError(f"connection {conn_id!r} has no server URL: set Host to e.g. https://app.cvat.ai")
    return host if "://" in host else f"https://{host}"


def auth_headers(conn: Any, conn_id: str) -> dict[str, str]:
    """HTTP headers that authenticate as the connection: Bearer token, or Basic with a login.

    For clients other than cvat-sdk (the trigger's async polling). Built where they are used,
    from the connection, so that no secret is ever part of a serialized trigger.
    """
    if not conn.password:
        raise CVATError(
            f"connection {conn_id!r} has no token or password: store a personal access token "
            "(or, with a user in Login, the password) in the connection's Password field"
        )
    if conn.login:
        basic = base64.b64encode(f"{conn.login}:{conn.password}".encode()).decode()
        headers = {"Authorization": f"Basic {basic}"}
    else:
        headers = {"Authorization": f"Bearer {conn.password}"}
    organization = (conn.extra_dejson or {}).get("organization")
    if organization:
        headers["X-Organization"] = organization
    return headers


def export_result(
    status: str, result_url: str | None, message: str | None, *, server: str, what: str
) -> str | None:
    """What one poll of ``/api/requests/{rq_id}`` means: the URL to download, None to keep waiting.

    The one reading of CVAT's request states, shared by the hook's polling and the trigger's:
    ``failed`` raises with CVAT's own message; ``finished`` without a URL means the resource
    exports to cloud storage, which this provider cannot download.
    """
    if status == "failed":
        raise CVATError(f"CVAT at {server} failed {what}: {message or '(no message)'}")
    if status != "finished":
        return None
    if not result_url:
        raise CVATError(
            f"CVAT at {server} finished {what} without a download URL: the resource exports to cloud "
            "storage; set its target storage to local, or export from that storage with source_uri"
        )
    return result_url


def export_timeout_message(server: str, what: str, timeout: float, status: object, progress: object) -> str:
    """Why an export was given up on, and what to do: the hook's polling and the trigger's say it alike."""
    return (
        f"CVAT at {server} did not finish {what} within {timeout:.0f} s (last status {status!r}, "
        f"progress {progress}). Raise export_timeout, or check that CVAT's export workers are running"
    )


def _parse_version(text: str) -> tuple[int, int]:
    parts = text.split("+")[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return (0, 0)


class CVATHook(BaseHook):
    """Connects to CVAT with a personal access token (Bearer), or a user and password.

    Connection fields: host (server URL), password (token or password), login (user; empty means
    the password is a personal access token), extras ``organization`` and ``verify_ssl``.
    """

    conn_name_attr = "cvat_conn_id"
    default_conn_name = "cvat_default"
    conn_type = "cvat"
    hook_name = "CVAT"

    def __init__(
        self,
        cvat_conn_id: str = default_conn_name,
        *,
        retries: int = 5,
        retry_backoff: float = 1.0,
        status_check_period: float = 2.0,
    ) -> None:
        super().__init__()
        self.cvat_conn_id = cvat_conn_id
        self.retries = retries
        self.retry_backoff = retry_backoff
        self.status_check_period = status_check_period

    # -- connection -------------------------------------------------------------------------

    @cached_property
    def _connection(self):
        return self.get_connection(self.cvat_conn_id)

    @property
    def server_url(self) -> str:
        return server_url_of(self._connection.host, self.cvat_conn_id)

    @property
    def organization(self) -> str | None:
        return self._connection.extra_dejson.get("organization") or None

    @property
    def verify_ssl(self) -> bool:
        return parse_verify_ssl(self._connection.extra_dejson.get("verify_ssl", True))

    def credentials_environment(self) -> dict[str, str]:
        """The connection as the ``CVAT_*`` variables that commands outside Airflow read.

        ``CVAT_ACCESS_TOKEN`` (the password when there is no login) or ``CVAT_USERNAME`` and
        ``CVAT_PASSWORD``; ``CVAT_ORGANIZATION`` when set; ``CVAT_VERIFY_SSL``. For a subprocess's
        environment only, never its command line; the secret is masked in task logs.
        """
        from airflow.sdk.log import mask_secret

        conn = self._connection
        if not conn.password:
            raise CVATError(
                f"connection {self.cvat_conn_id!r} has no token or password: store a personal access token "
                "(or, with a user in Login, the password) in the connection's Password field"
            )
        mask_secret(conn.password)
        credentials = Credentials(
            token=None if conn.login else conn.password,
            username=conn.login or None,
            password=conn.password if conn.login else None,
            organization=self.organization,
            verify_ssl=self.verify_ssl,
        )
        return credentials.to_env()

    def get_conn(self) -> Client:
        """An authenticated cvat-sdk client; the server version is checked once per hook."""
        return self.client

    @cached_property
    def client(self) -> Client:
        from cvat_sdk import Client
        from cvat_sdk.core.client import AccessTokenCredentials, Config, PasswordCredentials

        conn = self._connection
        config = Config(status_check_period=self.status_check_period, verify_ssl=self.verify_ssl)
        client = Client(self.server_url, config=config, check_server_version=False)
        # The sdk builds its urllib3 pool before we can pass a Configuration; pools are created
        # lazily from these keywords, so this reaches every request.
        client.api_client.rest_client.pool_manager.connection_pool_kw["retries"] = self._retry_policy()
        if not conn.password:
            raise CVATError(
                f"connection {self.cvat_conn_id!r} has no token or password: store a personal access token "
                "(or, with a user in Login, the password) in the connection's Password field"
            )
        credentials = (
            PasswordCredentials(conn.login, conn.password)
            if conn.login
            else AccessTokenCredentials(conn.password)
        )
        with self._errors("login"):
            client.login(credentials)
        if self.organization:
            client.organization_slug = self.organization
        self._check_version(client)
        return client

    def _retry_policy(self):
        from urllib3.util import Retry

        # POST is safe to retry here: CVAT deduplicates export requests by rq_id.
        methods = IDEMPOTENT_METHODS | {"PUT", "POST"}
        return Retry(**retry_settings(self.retries, self.retry_backoff, methods=methods))

    def _check_version(self, client: Client) -> None:
        with self._errors("server version (/api/server/about)"):
            about, _ = client.api_client.server_api.retrieve_about()
        if _parse_version(about.version) < MIN_SERVER_VERSION:
            needed = ".".join(map(str, MIN_SERVER_VERSION))
            raise CVATError(
                f"CVAT at {self.server_url} is version {about.version}; airflow-provider-cvat needs {needed} "
                "or later (the asynchronous export API). Upgrade the CVAT server."
            )
        self.server_version = about.version

    def test_connection(self) -> tuple[bool, str]:
        """The UI's Test button (shown with ``AIRFLOW__CORE__TEST_CONNECTION=Enabled``).

        Logs in, checks the version, reads the user in the chosen organization, and says in one
        sentence what is wrong: the server unreachable, the token or password rejected, the
        organization unknown. One retry only: a person is waiting for the answer.
        """
        self.retries = min(self.retries, 1)
        try:
            user, _ = self.client.api_client.users_api.retrieve_self()
        except Exception as err:  # the UI shows the message; nothing else can be done with it
            return False, self._diagnosis(err)
        where = f" in organization {self.organization!r}" if self.organization else ""
        return True, f"Connected to CVAT {self.server_version} at {self.server_url} as {user.username}{where}"

    def _diagnosis(self, err: Exception) -> str:
        """What a failed connection test means, from the status CVAT answered (if it answered)."""
        from cvat_sdk.api_client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        cause = err if isinstance(err, ApiException | HTTPError) else err.__context__
        url, login = self.server_url, self._connection.login
        if isinstance(cause, HTTPError):
            return (
                f"Server unreachable: no answer from {url} ({type(cause).__name__}). Check the Server "
                "URL (scheme, host, port) and that CVAT is up; for a self-signed certificate switch off "
                "Verify TLS."
            )
        status = getattr(cause, "status", None)
        detail = _cvat_detail(getattr(cause, "body", None))
        if status == 401 or (status == 400 and login):
            secret = f"the password of user {login!r}" if login else "the personal access token"
            return (
                f"Credentials rejected: CVAT at {url} refused {secret} ({detail}). Create a new token in "
                "CVAT (avatar menu → Settings → Security → access tokens), paste it as the Password and "
                "leave Login empty."
            )
        if status == 404 and self.organization and "organization" in detail:
            return (
                f"Organization unknown: CVAT at {url} has no organization {self.organization!r}. Use its "
                "short name (slug) as CVAT shows it in the organization menu, or leave Organization empty "
                "for the personal workspace."
            )
        if status == 403 and self.organization:
            return (
                f"Not a member: this user may not use organization {self.organization!r} on {url} "
                f"({detail}). Ask an organization admin to invite the user, or fix the Organization field."
            )
        return str(err)

    @contextmanager
    def _errors(self, resource: str) -> Iterator[None]:
        """Turn cvat-sdk and urllib3 exceptions into one CVATError that a person can act on."""
        from cvat_sdk.api_client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            yield
        except ApiException as err:
            raise CVATError(
                f"CVAT at {self.server_url} answered {err.status} for {resource}: "
                f"{_cvat_detail(err.body)}. What to do: {_hint(err.status or 0, resource)}"
            ) from None
        except HTTPError as err:
            raise CVATError(
                f"cannot reach CVAT at {self.server_url} for {resource} after {self.retries} retries: "
                f"{type(err).__name__}: {err}. Check the URL in connection {self.cvat_conn_id!r} and that "
                "the server is up"
            ) from None

    # -- reading ------------------------------------------------------------------------------

    def get_task(self, task_id: int):
        with self._errors(f"task {task_id}"):
            return self.client.tasks.retrieve(task_id)

    def get_project(self, project_id: int):
        with self._errors(f"project {project_id}"):
            return self.client.projects.retrieve(project_id)

    def get_project_tasks(self, project_id: int) -> list:
        with self._errors(f"tasks of project {project_id}"):
            return self.get_project(project_id).get_tasks()

    def get_job(self, job_id: int):
        with self._errors(f"job {job_id}"):
            return self.client.jobs.retrieve(job_id)

    def get_jobs(self, task_id: int) -> list:
        with self._errors(f"jobs of task {task_id}"):
            return self.get_task(task_id).get_jobs()

    def get_task_meta(self, task_id: int):
        with self._errors(f"frames of task {task_id}"):
            return self.get_task(task_id).get_meta()

    def list_raw(self, collection: str, what: str, **filters: Any) -> list[dict[str, Any]]:
        """Every item of a CVAT list endpoint (``jobs``, ``labels``) as JSON, in large pages.

        Raw JSON in pages of 500 rather than the sdk's models in pages of 10: a task of hundreds
        of jobs is a request or two, not dozens plus the parsing.
        """
        api = getattr(self.client.api_client, f"{collection}_api")
        items: list[dict[str, Any]] = []
        page = 1
        while True:
            with self._errors(what):
                _, response = api.list(**filters, page=page, page_size=500, _parse_response=False)
            data = json.loads(response.data)
            items += data["results"]
            if not data.get("next"):
                return items
            page += 1

    def get_task_frames(self, task_id: int) -> tuple[list[str], set[int]]:
        """The task's frame names (index = frame number) and its deleted frames, in one request.

        Raw JSON: the sdk's model parsing of a large task's meta costs more than the request.
        """
        with self._errors(f"frames of task {task_id}"):
            _, response = self.client.api_client.tasks_api.retrieve_data_meta(task_id, _parse_response=False)
        meta = json.loads(response.data)
        return [frame["name"] for frame in meta["frames"]], set(meta.get("deleted_frames") or [])

    def get_labels(self, *, task_id: int | None = None, project_id: int | None = None) -> list:
        owner = f"task {task_id}" if task_id is not None else f"project {project_id}"
        with self._errors(f"labels of {owner}"):
            source = self.get_task(task_id) if task_id is not None else self.get_project(project_id)
            return source.get_labels()

    def get_job_annotations(self, job_id: int) -> dict[str, Any]:
        with self._errors(f"annotations of job {job_id}"):
            return self.client.jobs.retrieve(job_id).get_annotations().to_dict()

    def get_task_annotations(self, task_id: int) -> dict[str, Any]:
        """All of a task's annotations in one request (a job's are those on its frames)."""
        with self._errors(f"annotations of task {task_id}"):
            # Raw JSON: the sdk's model parsing costs more than the request on a large task.
            _, response = self.client.api_client.tasks_api.retrieve_annotations(
                task_id, _parse_response=False
            )
        return json.loads(response.data)

    # -- exporting ----------------------------------------------------------------------------

    def start_export(self, resource: str, resource_id: int, format_name: str, *, save_images: bool) -> str:
        """POST .../dataset/export: CVAT queues the export and answers 202 with its request id."""
        if resource not in EXPORT_RESOURCES:
            raise ValueError(f"resource must be one of {EXPORT_RESOURCES}, not {resource!r}")
        from cvat_sdk.core.helpers import make_request_headers

        api = self.client.api_client
        url = self.client.api_map.make_endpoint_url(
            f"/api/{resource}/{resource_id}/dataset/export",
            query_params={"format": format_name, "save_images": save_images},
        )
        what = f"export of {resource[:-1]} {resource_id} as {format_name!r}"
        with self._errors(what):
            response = api.rest_client.POST(url, headers=make_request_headers(api))
        return json.loads(response.data)["rq_id"]

    def wait_for_export(self, rq_id: str, *, timeout: float, what: str) -> str:
        """Poll /api/requests/{rq_id} until finished; return the result URL to download."""
        return self.wait_for_exports({rq_id: what}, timeout=timeout)[rq_id]

    def wait_for_exports(self, requests: dict[str, str], *, timeout: float) -> dict[str, str]:
        """Poll several export requests (rq_id → what it exports) until all finish; rq_id → URL.

        CVAT's workers run queued exports side by side, so they are waited for together. The
        first wait is short and grows by POLL_GROWTH up to ``status_check_period``: a small export
        is downloaded moments after it finishes, a long one costs few requests.
        """
        deadline = time.monotonic() + timeout
        pending, results = dict(requests), {}
        interval = min(FIRST_POLL_INTERVAL, self.status_check_period)
        while True:
            for rq_id, what in list(pending.items()):
                with self._errors(f"status of {what}"):
                    request, _ = self.client.api_client.requests_api.retrieve(rq_id)
                status = str(request.status.value)
                url = export_result(
                    status, request.result_url, request.message, server=self.server_url, what=what
                )
                if url is not None:
                    results[rq_id] = url
                    del pending[rq_id]
                elif time.monotonic() >= deadline:
                    raise CVATExportTimeout(
                        export_timeout_message(self.server_url, what, timeout, status, request.progress)
                    )
            if not pending:
                return results
            self.log.info("Waiting for CVAT: %d export(s) not finished yet", len(pending))
            time.sleep(interval)
            interval = min(interval * POLL_GROWTH, self.status_check_period)

    def iter_download(self, url: str, *, what: str) -> Iterator[bytes]:
        """Stream a result URL in chunks, so memory stays flat whatever the archive's size."""
        from cvat_sdk.core.helpers import make_request_headers

        api = self.client.api_client
        with self._errors(f"download of {what}"):
            response = api.rest_client.GET(
                url, headers=make_request_headers(api), _parse_response=False, _request_timeout=600
            )
        try:
            while chunk := response.read(DOWNLOAD_CHUNK, decode_content=True):
                yield chunk
        finally:
            response.release_conn()
