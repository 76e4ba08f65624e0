"""The CVAT double's webhooks: ``/api/webhooks`` list (filters), create, GET, PATCH, DELETE, events,
and ``ping``, which really POSTs a signed ping to the webhook's target URL.

Shapes follow ``tests/cvat_recorded/webhook_create.json``, ``webhook.json``,
``webhook_events_project.json`` and ``webhook_ping.json`` (held by the contract test). The secret
is write-only, as in CVAT: never in an answer. ``double.webhooks`` (id -> Webhook) lets tests
inspect what was registered, secret included.

Wired into the double by ``register(api)``, called from ``_Api.__init__`` in server.py.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .state import ApiError, now_iso

if TYPE_CHECKING:
    from .server import _Api, _Call, _Response

# GET /api/webhooks/events?type=project, as recorded.
PROJECT_EVENTS = (
    "create:task update:task delete:task create:job update:job delete:job create:issue update:issue "
    "delete:issue create:comment update:comment delete:comment completed:request[export:annotations] "
    "completed:request[export:dataset] completed:request[export:backup] completed:request[create:task] "
    "completed:request[merge:task] completed:request[merge:job] completed:request[calculate:quality] "
    "update:project delete:project"
).split()
ORGANIZATION_EVENTS = [
    *PROJECT_EVENTS,
    "create:project",
    "update:organization",
    "delete:organization",
    "create:invitation",
    "delete:invitation",
    "create:membership",
    "update:membership",
    "delete:membership",
]
_GROUPS = {
    "task": "Task",
    "job": "Job",
    "issue": "Issue",
    "comment": "Comment",
    "project": "Project",
    "organization": "Organization",
    "invitation": "Invitation",
    "membership": "Membership",
}
_REQUEST_GROUPS = {
    "export:annotations": "Dataset export",
    "export:dataset": "Dataset export",
    "export:backup": "Backup export",
    "create:task": "Task data creation",
    "merge:task": "Consensus merge",
    "merge:job": "Consensus merge",
    "calculate:quality": "Quality report creation",
}
_WRITABLE = ("target_url", "description", "content_type", "secret", "is_active", "enable_ssl", "events")


@dataclass
class Webhook:
    id: int
    target_url: str
    type: str
    events: list[str]
    owner: Any
    project_id: int | None = None
    organization_id: int | None = None
    description: str = ""
    content_type: str = "application/json"
    secret: str = ""
    is_active: bool = True
    enable_ssl: bool = True
    created: str = field(default_factory=now_iso)
    updated: str = field(default_factory=now_iso)
    last_status: int | None = None
    last_delivery_date: str | None = None
    deliveries: list[dict[str, Any]] = field(default_factory=list)


def register(api: _Api) -> None:
    """Add the webhook routes to the double (the hook server.py calls)."""
    routes = _WebhookRoutes(api)
    api.double.webhooks = routes.webhooks  # type: ignore[attr-defined]
    api._add("GET", r"/api/webhooks/events", routes.events)
    api._add("GET", r"/api/webhooks", routes.list)
    api._add("POST", r"/api/webhooks", routes.create)
    api._add("GET", r"/api/webhooks/(\d+)", routes.get)
    api._add("PATCH", r"/api/webhooks/(\d+)", routes.patch)
    api._add("DELETE", r"/api/webhooks/(\d+)", routes.delete)
    api._add("POST", r"/api/webhooks/(\d+)/ping", routes.ping)


class _WebhookRoutes:
    def __init__(self, api: _Api) -> None:
        self.api = api
        self.webhooks: dict[int, Webhook] = {}

    # -- rendering --------------------------------------------------------------------------

    def to_json(self, hook: Webhook, *, with_status: bool = True) -> dict[str, Any]:
        base = self.api.base
        body = {
            "id": hook.id,
            "url": f"{base}/api/webhooks/{hook.id}",
            "target_url": hook.target_url,
            "description": hook.description,
            "type": hook.type,
            "content_type": hook.content_type,
            "is_active": hook.is_active,
            "enable_ssl": hook.enable_ssl,
            "created_date": hook.created,
            "updated_date": hook.updated,
            "owner": hook.owner.brief(base),
            "project_id": hook.project_id,
            "organization": hook.organization_id,
            "events": sorted(hook.events),
        }
        # CVAT computes these from the latest delivery and leaves them out when there is none.
        if with_status and hook.last_delivery_date is not None:
            body["last_status"] = hook.last_status
            body["last_delivery_date"] = hook.last_delivery_date
        return body

    def _response(self, status: int, body: Any, **headers: str) -> _Response:
        from .server import _Response

        return _Response(status, body, headers=headers)

    # -- access -----------------------------------------------------------------------------

    def _hook(self, call: _Call, webhook_id: str) -> Webhook:
        hook = self.webhooks.get(int(webhook_id))
        if hook is None:
            raise ApiError(404)
        self.api.check_access(call, hook.organization_id)
        return hook

    # -- routes -----------------------------------------------------------------------------

    def events(self, call: _Call) -> _Response:
        kind = call.param("type", "project")
        names = PROJECT_EVENTS if kind == "project" else ORGANIZATION_EVENTS
        return self._response(
            200,
            {
                "webhook_type": kind,
                "events": [{"key": n, "group": {"display_name": _group(n)}} for n in names],
            },
        )

    def list(self, call: _Call) -> _Response:
        filters = {
            "target_url": call.param("target_url"),
            "type": call.param("type"),
            "project_id": call.int_param("project_id"),
        }
        items = [
            hook
            for hook in self.webhooks.values()
            if self.api.visible(call, hook.organization_id)
            and all(value is None or getattr(hook, name) == value for name, value in filters.items())
        ]
        items.sort(key=lambda hook: -hook.id)
        return self.api.page(call, items, self.to_json)

    def create(self, call: _Call) -> _Response:
        body = call.json()
        if not isinstance(body, dict):
            raise ApiError(400, {"non_field_errors": ["Invalid data."]})
        kind = body.get("type")
        if kind not in ("project", "organization"):
            raise ApiError(400, {"type": [f'"{kind}" is not a valid choice.']})
        if not body.get("target_url"):
            raise ApiError(400, {"target_url": ["This field is required."]})
        project_id, org_id = self._owner_scope(call, kind, body.get("project_id"))
        events = self._events(kind, body.get("events") or [])
        assert call.user is not None
        state = self.api.state
        hook = Webhook(
            id=state.next_id("webhook"),
            target_url=body["target_url"],
            type=kind,
            events=events,
            owner=call.user,
            project_id=project_id,
            organization_id=org_id,
            description=body.get("description", ""),
            content_type=body.get("content_type", "application/json"),
            secret=body.get("secret", ""),
            is_active=bool(body.get("is_active", True)),
            enable_ssl=bool(body.get("enable_ssl", True)),
        )
        self.webhooks[hook.id] = hook
        location = f"{self.api.base}/api/webhooks/{hook.id}"
        return self._response(201, self.to_json(hook, with_status=False), Location=location)

    def get(self, call: _Call, webhook_id: str) -> _Response:
        return self._response(200, self.to_json(self._hook(call, webhook_id)))

    def patch(self, call: _Call, webhook_id: str) -> _Response:
        hook = self._hook(call, webhook_id)
        body = call.json()
        if "events" in body:
            body["events"] = self._events(hook.type, body["events"] or [])
        for name in _WRITABLE:
            if name in body:
                setattr(hook, name, body[name])
        hook.updated = now_iso()
        return self._response(200, self.to_json(hook))

    def delete(self, call: _Call, webhook_id: str) -> _Response:
        from .server import _Response

        hook = self._hook(call, webhook_id)
        del self.webhooks[hook.id]
        return _Response(204, raw=b"")

    def ping(self, call: _Call, webhook_id: str) -> _Response:
        """Send a signed ``ping`` to the target, as CVAT does, and answer with the delivery."""
        hook = self._hook(call, webhook_id)
        assert call.user is not None
        payload = {
            "event": "ping",
            "webhook": self.to_json(hook),
            "sender": call.user.brief(self.api.base),
        }
        delivery = deliver(hook, payload)
        delivery["id"] = self.api.state.next_id("webhook_delivery")
        hook.deliveries.append(delivery)
        return self._response(200, delivery)

    # -- validation -------------------------------------------------------------------------

    def _owner_scope(self, call: _Call, kind: str, project_id: Any) -> tuple[int | None, int | None]:
        """(project id, organization id) of a new webhook, validated like CVAT."""
        if kind == "project":
            if not isinstance(project_id, int):
                raise ApiError(400, {"project_id": ["Project webhook requires a project id."]})
            project = self.api.project(call, project_id)
            return project.id, project.organization_id
        if project_id is not None:
            raise ApiError(400, {"project_id": ["Organization webhook must not have a project id."]})
        if not isinstance(call.org, int):
            raise ApiError(400, {"organization": ["Organization webhook requires an organization context."]})
        return None, call.org

    @staticmethod
    def _events(kind: str, events: list[Any]) -> list[str]:
        allowed = PROJECT_EVENTS if kind == "project" else ORGANIZATION_EVENTS
        bad = [e for e in events if e not in allowed]
        if bad or not events:
            raise ApiError(
                400, {"events": [f"Unsupported events: {bad}" if bad else "This list may not be empty."]}
            )
        return sorted(set(events))


def _group(name: str) -> str:
    if name.startswith("completed:request["):
        return _REQUEST_GROUPS.get(name[len("completed:request[") : -1], "Request")
    return _GROUPS.get(name.partition(":")[2], name)


def deliver(hook: Webhook, payload: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """POST ``payload`` to the hook's target, signed like CVAT; the delivery record (CVAT's shape)."""
    body = json.dumps(payload).encode()
    headers = {"Content-Type": hook.content_type, "User-Agent": "CVAT/2.73.0 cvat-double"}
    if hook.secret:
        digest = hmac.new(hook.secret.encode(), body, hashlib.sha256).hexdigest()
        headers["X-Signature-256"] = f"sha256={digest}"
    started = time.monotonic()
    request = urllib.request.Request(hook.target_url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            status, text = answer.status, answer.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as error:
        status, text = 0, str(error)
    stamp = now_iso()
    hook.last_status, hook.last_delivery_date = status, stamp
    return {
        "webhook_id": hook.id,
        "event": payload["event"],
        "status_code": status,
        "redelivery": False,
        "attempt": 1,
        "request_duration": int((time.monotonic() - started) * 1000),
        "created_date": stamp,
        "updated_date": stamp,
        "changed_fields": "",
        "request": payload,
        "response": text,
    }
