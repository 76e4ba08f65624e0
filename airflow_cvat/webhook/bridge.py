"""The CVAT webhook bridge: a FastAPI app the Airflow api-server mounts at ``/cvat``.

CVAT can only POST its own signed JSON; Airflow's REST API wants a JWT and
``{"logical_date": null, "conf": {...}}``. This app sits between: ``POST /cvat/webhook`` checks
the HMAC signature (the only authentication: plugin apps get none from Airflow), decides with
``airflow_cvat.webhook.rules`` and creates the DAG run in-process with Airflow's own
``trigger_dag``, then answers CVAT at once (CVAT gives up after 10 s).

Configuration: an Airflow connection (``cvat_webhook``, or ``[cvat] webhook_conn_id``), secret in
its password, routing in its extra (see ``docs/webhooks.md``). It is read on every delivery, so a
changed secret or route applies without restarting the api-server.

Answers: 202 run created; 200 merged into an existing run (cool-down window or redelivery), ping,
or event ignored (with the reason); 400 not JSON / not a CVAT event; 401 missing or wrong
signature; 404 DAG unknown; 413 body too large; 503 not configured or database busy (CVAT retries
5xx deliveries).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from airflow.plugins_manager import AirflowPlugin
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from airflow_cvat.webhook.rules import (
    DEFAULT_CONN_ID,
    SIGNATURE_HEADER,
    BridgeConfig,
    ConfigError,
    Decision,
    WebhookError,
    decide,
    parse_event,
    verify_signature,
)

log = logging.getLogger(__name__)

URL_PREFIX = "/cvat"
WEBHOOK_PATH = "/webhook"
TRIGGERING_USER = "cvat-webhook"
ENDPOINT = URL_PREFIX + WEBHOOK_PATH
PLUGIN_NAME = f"cvat_webhook: POST {ENDPOINT}"


# ---------------------------------------------------------------------------------------------
# Configuration and body
# ---------------------------------------------------------------------------------------------


def conn_id() -> str:
    """The connection holding the secret and the routing: ``[cvat] webhook_conn_id``."""
    from airflow.configuration import conf

    return conf.get("cvat", "webhook_conn_id", fallback=DEFAULT_CONN_ID)


def load_settings() -> tuple[str, BridgeConfig]:
    """(secret, routing) from the connection; 503 when it is missing or invalid.

    ``airflow.models.Connection.get_connection_from_secrets`` is the server-side lookup (secrets
    backends, environment, then the metadata DB); the api-server is not a task, so the Task SDK
    path does not apply here.
    """
    from airflow.exceptions import AirflowNotFoundException
    from airflow.models.connection import Connection

    name = conn_id()
    try:
        connection = Connection.get_connection_from_secrets(name)
    except AirflowNotFoundException:
        log.error("CVAT webhook: connection %r does not exist; refusing deliveries", name)
        raise WebhookError(503, not_configured(name, "does not exist")) from None
    if not connection.password:
        log.error("CVAT webhook: connection %r has no secret in its password; refusing deliveries", name)
        raise WebhookError(503, not_configured(name, "has no secret in its Password"))
    try:
        config = BridgeConfig.from_extra(connection.extra_dejson)
    except ConfigError as error:
        log.error("CVAT webhook: connection %r has an invalid extra: %s", name, error)
        raise WebhookError(
            503, f"webhook bridge misconfigured: the Extra of Airflow connection {name!r} is invalid "
            "(the api-server log says why; docs/webhooks.md lists its keys)"
        ) from None  # fmt: skip
    return connection.password, config


def not_configured(name: str, problem: str) -> str:
    """The 503 answer: which connection to create and what goes in it. It names no secret and
    echoes nothing of the connection, since the caller is not yet authenticated."""
    return (
        f"webhook bridge not configured: Airflow connection {name!r} {problem}. Create it (Admin > "
        "Connections, any type, e.g. generic) with the CVAT webhook's secret as Password and, "
        'optionally, routing as JSON in Extra (e.g. {"dag_id": "cvat_retrain", "cooldown_seconds": 300})'
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing (413) before reading when Content-Length says it is too large, and
    while streaming when a chunked or lying sender goes past the limit."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise WebhookError(413, f"body larger than {limit} bytes")
        except ValueError:
            raise WebhookError(400, "invalid Content-Length") from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise WebhookError(413, f"body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


# ---------------------------------------------------------------------------------------------
# Triggering
# ---------------------------------------------------------------------------------------------


def trigger(decision: Decision) -> tuple[int, dict[str, Any]]:
    """Create the run named by the decision, or find it: (HTTP status, answer).

    The run id is deterministic (see ``airflow_cvat.webhook.rules``), so the unique ``(dag_id, run_id)``
    constraint is what merges a burst and absorbs redeliveries, also when two deliveries race in
    two api-server workers: the loser's insert fails and it answers with the winner's run.
    """
    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.exceptions import DagNotFound, DagRunAlreadyExists, ParamValidationError
    from airflow.utils.session import create_session
    from airflow.utils.types import DagRunTriggeredByType, DagRunType
    from sqlalchemy.exc import IntegrityError, OperationalError

    assert decision.dag_id is not None and decision.run_id is not None
    answer = {"dag_id": decision.dag_id, "dag_run_id": decision.run_id}
    try:
        with create_session() as session:
            trigger_dag(
                decision.dag_id,
                run_id=decision.run_id,
                conf=dict(decision.conf),
                run_type=DagRunType.MANUAL,
                triggered_by=DagRunTriggeredByType.REST_API,
                triggering_user_name=TRIGGERING_USER,
                note=decision.note,
                session=session,
            )
    except (DagRunAlreadyExists, IntegrityError):
        log.info("CVAT webhook: %s merged into run %s", decision.note, decision.run_id)
        return 200, {"status": "merged", **answer}
    except ParamValidationError as error:
        # The route's conf does not fit the DAG's params (e.g. a model the form does not list): a
        # retry cannot fix it, so a 4xx (CVAT retries 5xx) that says what to change.
        log.error("CVAT webhook: conf %s refused by DAG %r: %s", decision.conf, decision.dag_id, error)
        detail = (
            f"the conf for DAG {decision.dag_id!r} is refused: {error}; fix the routing conf in connection"
        )
        return 422, {"status": "error", "detail": f"{detail} {conn_id()!r}"}
    except DagNotFound:
        log.error("CVAT webhook: DAG %r is not known to Airflow (not parsed yet?)", decision.dag_id)
        return 404, {"status": "error", "detail": f"DAG {decision.dag_id!r} not found"}
    except OperationalError:
        log.exception("CVAT webhook: database error creating %s; CVAT will retry", decision.run_id)
        return 503, {"status": "error", "detail": "database unavailable, retry"}
    log.info("CVAT webhook: %s -> run %s of %s", decision.note, decision.run_id, decision.dag_id)
    return 202, {"status": "queued", **answer}


# ---------------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------------


def create_app() -> FastAPI:
    """The bridge app; the plugin mounts it at ``URL_PREFIX`` in the api-server."""
    app = FastAPI(
        title="CVAT webhook bridge",
        description="Receives signed CVAT webhook deliveries and triggers Airflow DAG runs.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    @app.post(WEBHOOK_PATH)
    async def receive(request: Request) -> JSONResponse:
        """One CVAT delivery: verify, decide, trigger; see the module docstring for answers."""
        try:
            status, answer = await handle(request)
        except WebhookError as error:
            status, answer = error.status, {"status": "error", "detail": error.detail}
        return JSONResponse(answer, status_code=status)

    return app


async def handle(request: Request) -> tuple[int, dict[str, Any]]:
    """Order matters: size first (cheap), then the signature over the raw bytes, then parsing."""
    received_at = datetime.now(UTC)
    secret, config = await run_in_threadpool(load_settings)
    body = await read_body(request, config.max_body_bytes)
    if not verify_signature(secret, body, request.headers.get(SIGNATURE_HEADER)):
        log.warning("CVAT webhook: rejected a delivery with a missing or wrong signature")
        raise WebhookError(401, "missing or wrong X-Signature-256")
    event = parse_event(body)
    decision = decide(event, config, received_at)
    if decision.action == "ignore":
        log.info("CVAT webhook: %s ignored: %s", event.get("event"), decision.reason)
        status = "pong" if decision.reason == "ping" else "ignored"
        return 200, {"status": status, "detail": decision.reason}
    return await run_in_threadpool(trigger, decision)


class CVATWebhookPlugin(AirflowPlugin):
    """Registers the bridge with the api-server (entry point ``airflow.plugins``)."""

    # Admin > Plugins shows a plugin's name and where it came from, nothing else: the name says
    # what the plugin is and where CVAT must post.
    name = PLUGIN_NAME
    fastapi_apps = [
        {"app": create_app(), "url_prefix": URL_PREFIX, "name": f"CVAT webhook bridge (POST {ENDPOINT})"}
    ]
