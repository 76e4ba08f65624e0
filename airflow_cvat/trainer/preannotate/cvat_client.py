"""The pre-annotation command's CVAT client: cvat-sdk under :mod:`airflow_cvat.cvat_policy`.

Credentials come from the ``CVAT_*`` environment variables only (never argv). A refusal (4xx
but 429) is bad input naming the resource: no retry can fix it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from airflow_cvat import cvat_policy
from airflow_cvat.envelope import BadInput

#: Attempts of one upload (PATCH create), each after checking what the last one stored.
UPLOAD_ATTEMPTS = 4


def sdk_credentials(credentials: cvat_policy.Credentials) -> Any:
    """The policy's credentials as cvat-sdk's: a personal access token, or a user and password."""
    from cvat_sdk.core.client import AccessTokenCredentials, PasswordCredentials

    if credentials.token:
        return AccessTokenCredentials(credentials.token)
    return PasswordCredentials(credentials.username, credentials.password)


def make_client(url: str, env: Mapping[str, str], workers: int) -> Any:
    """A logged-in cvat-sdk client that retries transient faults (idempotent methods only).

    PATCH is not retried blindly: a create that reached the server would be sent twice;
    :meth:`~airflow_cvat.trainer.preannotate.annotator.Annotator.upload` checks what arrived instead.
    """
    from cvat_sdk import Client
    from cvat_sdk.api_client.exceptions import ApiException
    from cvat_sdk.core.client import Config
    from urllib3.util import Retry

    credentials = cvat_policy.Credentials.from_env(env)
    client = Client(url, config=Config(verify_ssl=credentials.verify_ssl), check_server_version=False)
    pool = client.api_client.rest_client.pool_manager.connection_pool_kw
    pool["retries"] = Retry(**cvat_policy.retry_settings(retries=5, backoff=0.5))
    pool["maxsize"] = max(workers, 1) + 1  # parallel frame downloads share the pool
    try:
        client.login(sdk_credentials(credentials))
        # A token login sends nothing; ask who we are so wrong credentials fail here, clearly.
        client.api_client.users_api.retrieve_self()
    except ApiException as error:
        if error.status in (401, 403):
            detail = cvat_policy.error_detail(error.body)
            raise BadInput(f"CVAT at {url} rejected the credentials ({error.status}): {detail}") from None
        raise
    if credentials.organization:
        client.organization_slug = credentials.organization
    return client


def api_call(what: str, call: Callable[[], Any]) -> Any:
    """Run a CVAT call; a refusal becomes BadInput naming the resource and CVAT's answer."""
    from cvat_sdk.api_client.exceptions import ApiException

    try:
        return call()
    except ApiException as error:
        raise_if_refused(error, what)
        raise


def raise_if_refused(error: Exception, what: str) -> None:
    """BadInput when CVAT refused ``what`` (a 4xx but 429); otherwise return and let the caller decide."""
    status = getattr(error, "status", None)
    if cvat_policy.is_refusal(status):
        detail = cvat_policy.error_detail(getattr(error, "body", None))
        raise BadInput(f"CVAT answered {status} for {what}: {detail}") from None


def select_jobs(jobs: Iterable[Any], states: Sequence[str], job_ids: Sequence[int] = ()) -> list[Any]:
    """Annotation jobs (never ground truth) in the wanted states, by id."""
    chosen = [
        job
        for job in jobs
        if str(job.type) == "annotation" and str(job.state) in states and (not job_ids or job.id in job_ids)
    ]
    return sorted(chosen, key=lambda job: job.id)
