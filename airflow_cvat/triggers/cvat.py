"""CVATRequestTrigger: wait for CVAT's background requests (exports) in the triggerer.

A deferrable CVATExportOperator starts its exports, then hands the wait to this trigger and
frees its worker slot, the way the amazon provider's SageMaker operators wait for a training
job. The trigger polls ``GET /api/requests/{rq_id}`` with httpx (async, already an Airflow
dependency) and fires one event: every result URL, or the first failure with CVAT's message.

Triggers are serialized into the metadata database in clear, so the trigger carries the
connection id, never the token: credentials are read from the connection when it runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_cvat.hooks.cvat import (
    FIRST_POLL_INTERVAL,
    POLL_GROWTH,
    RETRY_STATUSES,
    CVATError,
    CVATHook,
    _cvat_detail,
    _hint,
    auth_headers,
    export_result,
    export_timeout_message,
    server_url_of,
)


class CVATRequestTrigger(BaseTrigger):
    """Poll CVAT request ids until all finish (or one fails, or time runs out).

    :param requests: rq_id → what it is (e.g. "export of task 7 as 'COCO 1.0'"), for messages.
    :param cvat_conn_id: the Airflow connection to CVAT; its secret is read when the trigger runs.
    :param poll_interval: the longest wait between polls; the first is short and grows up to it.
    :param timeout: seconds from the trigger's start before it gives up with a clear message.
    :param retries: consecutive transient failures (429, 5xx, network) tolerated per request.

    Events: ``{"status": "success", "results": {rq_id: result_url}}`` or
    ``{"status": "error", "rq_id": ..., "message": ...}``.
    """

    def __init__(
        self,
        requests: dict[str, str],
        cvat_conn_id: str = CVATHook.default_conn_name,
        poll_interval: float = 2.0,
        timeout: float = 3600,
        retries: int = 5,
    ) -> None:
        super().__init__()
        self.requests = dict(requests)
        self.cvat_conn_id = cvat_conn_id
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.retries = retries

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "requests": self.requests,
                "cvat_conn_id": self.cvat_conn_id,
                "poll_interval": self.poll_interval,
                "timeout": self.timeout,
                "retries": self.retries,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            results = await self._wait()
        except CVATError as err:
            yield TriggerEvent({"status": "error", "rq_id": getattr(err, "rq_id", None), "message": str(err)})
            return
        yield TriggerEvent({"status": "success", "results": results})

    async def _wait(self) -> dict[str, str]:
        import httpx

        conn = await CVATHook.aget_connection(self.cvat_conn_id)
        server = server_url_of(conn.host, self.cvat_conn_id)
        verify = (conn.extra_dejson or {}).get("verify_ssl", True)
        if isinstance(verify, str):
            verify = verify.lower() not in ("false", "0", "no")
        headers = {**auth_headers(conn, self.cvat_conn_id), "Accept": "application/vnd.cvat+json"}
        deadline = time.monotonic() + self.timeout
        pending, results = dict(self.requests), {}
        interval = min(FIRST_POLL_INTERVAL, self.poll_interval)
        async with httpx.AsyncClient(
            base_url=server, headers=headers, verify=bool(verify), timeout=60
        ) as http:
            while True:
                for rq_id, what in list(pending.items()):
                    request = await self._status(http, server, rq_id, what)
                    try:
                        url = export_result(
                            request.get("status", ""),
                            request.get("result_url"),
                            request.get("message"),
                            server=server,
                            what=what,
                        )
                    except CVATError as err:
                        err.rq_id = rq_id  # type: ignore[attr-defined]
                        raise
                    if url is not None:
                        results[rq_id] = url
                        del pending[rq_id]
                    elif time.monotonic() >= deadline:
                        raise CVATError(
                            export_timeout_message(
                                server, what, self.timeout, request.get("status"), request.get("progress")
                            )
                        )
                if not pending:
                    return results
                self.log.info("Waiting for CVAT: %d request(s) not finished yet", len(pending))
                await asyncio.sleep(interval)
                interval = min(interval * POLL_GROWTH, self.poll_interval)

    async def _status(self, http: Any, server: str, rq_id: str, what: str) -> dict[str, Any]:
        """One ``GET /api/requests/{rq_id}``, retrying transient faults with backoff."""
        import httpx

        path = f"/api/requests/{quote(rq_id, safe='')}"
        for attempt in range(self.retries + 1):
            last_try = attempt == self.retries
            try:
                response = await http.get(path)
            except httpx.TransportError as err:
                if last_try:
                    raise CVATError(
                        f"cannot reach CVAT at {server} for the status of {what} after {self.retries} "
                        f"retries: {type(err).__name__}: {err}. Check connection {self.cvat_conn_id!r} and "
                        "that the server is up"
                    ) from None
            else:
                if response.status_code == 200:
                    return response.json()
                if response.status_code not in RETRY_STATUSES or last_try:
                    status, resource = response.status_code, f"the status of {what}"
                    raise CVATError(
                        f"CVAT at {server} answered {status} for {resource}: "
                        f"{_cvat_detail(response.content)}. What to do: {_hint(status, resource)}"
                    )
            await asyncio.sleep(min(2**attempt * 0.5, 10))
        raise AssertionError("unreachable")
