"""What the CVAT webhook bridge decides, without any I/O: signatures, event rules, routing, run ids.

Kept apart from the FastAPI bridge (``airflow_cvat.webhook.bridge``) so every decision can be
unit-tested on plain dicts, and so the pieces that must be right for security (the signature
check) and for correctness under redelivery and concurrency (the run id) are small and visible.

How one delivery is decided:

1. ``verify_signature``: ``X-Signature-256: sha256=<hex HMAC-SHA256(secret, raw body)>``, the
   exact bytes CVAT sent, compared in constant time.
2. ``parse_event``: JSON object with a CVAT event name (``ping`` or ``verb:resource``).
3. ``decide``: which resource (job, task, project), which route (per task, per project, default),
   whether a rule of that route matches, and the run id.

The run id is what makes the bridge idempotent and merges bursts (the cool-down), with the
database's unique ``(dag_id, run_id)`` constraint as the only lock:

* cool-down ``N > 0`` s: ``cvat_webhook__<route>__<window start>``, the window being the
  N-second slot (aligned to the epoch) holding the time of the change in CVAT (the resource's
  ``updated_date``). Every event of a route in one window maps to the same run id: the first
  creates the run, the others (and any number of redeliveries, even days later, because the
  time comes from the body, not from the clock) find it.
* cool-down ``0``: ``cvat_webhook__<route>__<event key>``: one run per distinct event, and a
  redelivery of the same event still finds its run.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

DEFAULT_DAG_ID = "cvat_retrain"
DEFAULT_CONN_ID = "cvat_webhook"
DEFAULT_COOLDOWN_SECONDS = 300
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
RUN_ID_PREFIX = "cvat_webhook__"
SIGNATURE_HEADER = "X-Signature-256"

# CVAT event names: "ping", "create:task", "update:job", "completed:request[export:dataset]", ...
_EVENT_NAME = re.compile(r"^(ping|[a-z_]+:[a-z_]+(\[[a-z_:]+\])?)$")
# Resources whose events carry a task or a project we can route on.
_RESOURCES = ("job", "task", "project")


class WebhookError(Exception):
    """A delivery the bridge refuses; ``status`` is the HTTP answer (400, 401, 413, ...)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class ConfigError(ValueError):
    """The routing configuration (the connection's extra) is not valid."""


# ---------------------------------------------------------------------------------------------
# Signature and body
# ---------------------------------------------------------------------------------------------


def sign(secret: str | bytes, body: bytes) -> str:
    """The ``X-Signature-256`` value CVAT sends for ``body``: ``sha256=<hex digest>``."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def verify_signature(secret: str | bytes, body: bytes, header: str | None) -> bool:
    """Constant-time check of ``header`` against the HMAC of the raw body.

    The comparison is over the whole ``sha256=<hex>`` string with ``hmac.compare_digest``, so its
    time does not depend on how much of a forged signature is right. An empty secret never
    verifies: a bridge with no secret configured must not accept unsigned deliveries.
    """
    if not secret or not header:
        return False
    try:
        given = header.strip().encode("ascii")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(sign(secret, body).encode("ascii"), given)


def parse_event(body: bytes) -> dict[str, Any]:
    """The delivery as a dict, or 400 when it is not JSON or not shaped like a CVAT event."""
    try:
        event = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise WebhookError(400, "body is not JSON") from None
    if not isinstance(event, dict):
        raise WebhookError(400, "body is not a JSON object")
    name = event.get("event")
    if not isinstance(name, str) or not _EVENT_NAME.match(name):
        raise WebhookError(400, "not a CVAT webhook event (no valid 'event' field)")
    if name == "ping":
        if not isinstance(event.get("webhook"), dict):
            raise WebhookError(400, "a CVAT ping carries its 'webhook'")
    elif not isinstance(event.get("webhook_id"), int):
        raise WebhookError(400, "a CVAT event carries its 'webhook_id'")
    return event


# ---------------------------------------------------------------------------------------------
# Rules
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One condition under which an event starts a run.

    ``event``: the CVAT event name (``update:job``). ``when``: field -> accepted values, checked
    on the event's resource (the ``job`` of an ``update:job``). ``changed``: fields that must have
    changed in this very update (present in ``before_update`` with another value), which is what
    "became completed" means, as opposed to "is completed and something else was edited".
    """

    event: str
    when: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    changed: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: Any) -> Rule:
        if not isinstance(data, dict) or not isinstance(data.get("event"), str):
            raise ConfigError(f"a rule needs an 'event' name: {data!r}")
        when = data.get("when") or {}
        if not isinstance(when, dict):
            raise ConfigError(f"a rule's 'when' maps fields to accepted values: {data!r}")
        normalized = {k: tuple(v) if isinstance(v, list | tuple) else (v,) for k, v in when.items()}
        changed = data.get("changed") or []
        if isinstance(changed, str):
            changed = [changed]
        unknown = set(data) - {"event", "when", "changed"}
        if unknown:
            raise ConfigError(f"unknown rule keys {sorted(unknown)} in {data!r}")
        return cls(event=data["event"], when=normalized, changed=tuple(changed))

    def matches(self, event: Mapping[str, Any]) -> bool:
        if event.get("event") != self.event:
            return False
        resource = resource_of(event)
        if resource is None:
            return not self.when and not self.changed
        _, obj = resource
        if any(obj.get(name) not in accepted for name, accepted in self.when.items()):
            return False
        before = event.get("before_update") or {}
        return all(name in before and before[name] != obj.get(name) for name in self.changed)


# The default: an annotation job (not ground truth) whose state became "completed".
DEFAULT_RULES: tuple[Rule, ...] = (
    Rule(event="update:job", when={"type": ("annotation",), "state": ("completed",)}, changed=("state",)),
)

# Named presets for the documentation and for ``"rules": "<name>"`` in the configuration.
RULE_PRESETS: dict[str, tuple[Rule, ...]] = {
    "job-completed": DEFAULT_RULES,
    "job-accepted": (
        Rule(
            event="update:job", when={"type": ("annotation",), "stage": ("acceptance",)}, changed=("stage",)
        ),
    ),
    "job-completed-or-accepted": (
        DEFAULT_RULES[0],
        Rule(
            event="update:job", when={"type": ("annotation",), "stage": ("acceptance",)}, changed=("stage",)
        ),
    ),
    "any-job-update": (Rule(event="update:job"),),
    "task-completed": (Rule(event="update:task", when={"status": ("completed",)}, changed=("status",)),),
}


def parse_rules(data: Any) -> tuple[Rule, ...]:
    """A preset name or a list of rule objects."""
    if isinstance(data, str):
        if data not in RULE_PRESETS:
            raise ConfigError(f"unknown rule preset {data!r}; known: {sorted(RULE_PRESETS)}")
        return RULE_PRESETS[data]
    if not isinstance(data, list) or not data:
        raise ConfigError("'rules' is a preset name or a non-empty list of rules")
    return tuple(Rule.from_json(item) for item in data)


# ---------------------------------------------------------------------------------------------
# Configuration (the connection's extra)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RouteConfig:
    """Per-project or per-task overrides; ``None`` means "as the default"."""

    dag_id: str | None = None
    conf: Mapping[str, Any] = field(default_factory=dict)
    enabled: bool = True
    rules: tuple[Rule, ...] | None = None
    cooldown_seconds: int | None = None
    scope: str | None = None  # "project" or "task": what one run stands for

    @classmethod
    def from_json(cls, where: str, data: Any) -> RouteConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected an object, got {data!r}")
        unknown = set(data) - {"dag_id", "conf", "enabled", "rules", "cooldown_seconds", "scope"}
        if unknown:
            raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
        conf = {} if data.get("conf") is None else data["conf"]
        if not isinstance(conf, dict):
            raise ConfigError(f"{where}: 'conf' must be an object")
        scope = data.get("scope")
        if scope not in (None, "project", "task"):
            raise ConfigError(f"{where}: 'scope' is 'project' or 'task'")
        return cls(
            dag_id=_optional_str(where, "dag_id", data.get("dag_id")),
            conf=conf,
            enabled=bool(data.get("enabled", True)),
            rules=parse_rules(data["rules"]) if "rules" in data else None,
            cooldown_seconds=_optional_seconds(where, data.get("cooldown_seconds")),
            scope=scope,
        )


@dataclass(frozen=True)
class BridgeConfig:
    """Everything the bridge reads from the connection's extra (all keys optional)."""

    dag_id: str = DEFAULT_DAG_ID
    conf: Mapping[str, Any] = field(default_factory=dict)
    rules: tuple[Rule, ...] = DEFAULT_RULES
    cooldown_seconds: int = DEFAULT_COOLDOWN_SECONDS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    projects: Mapping[int, RouteConfig] = field(default_factory=dict)
    tasks: Mapping[int, RouteConfig] = field(default_factory=dict)

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any] | None) -> BridgeConfig:
        extra = dict(extra or {})
        known = {"dag_id", "conf", "rules", "cooldown_seconds", "max_body_bytes", "projects", "tasks"}
        unknown = set(extra) - known
        if unknown:
            raise ConfigError(f"unknown keys {sorted(unknown)}; known: {sorted(known)}")
        conf = {} if extra.get("conf") is None else extra["conf"]
        if not isinstance(conf, dict):
            raise ConfigError("'conf' must be an object")
        cooldown = _optional_seconds("config", extra.get("cooldown_seconds"))
        max_body = _optional_seconds("config", extra.get("max_body_bytes"))
        return cls(
            dag_id=_optional_str("config", "dag_id", extra.get("dag_id")) or DEFAULT_DAG_ID,
            conf=conf,
            rules=parse_rules(extra["rules"]) if "rules" in extra else DEFAULT_RULES,
            cooldown_seconds=DEFAULT_COOLDOWN_SECONDS if cooldown is None else cooldown,
            max_body_bytes=max_body or DEFAULT_MAX_BODY_BYTES,
            projects=_routes("projects", extra.get("projects")),
            tasks=_routes("tasks", extra.get("tasks")),
        )


def _optional_str(where: str, name: str, value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(f"{where}: {name!r} must be a non-empty string")
    return value


def _optional_seconds(where: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"{where}: expected a number >= 0, got {value!r}")
    return int(value)


def _routes(name: str, data: Any) -> dict[int, RouteConfig]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"'{name}' maps ids to route objects")
    routes = {}
    for key, value in data.items():
        try:
            routes[int(key)] = RouteConfig.from_json(f"{name}.{key}", value)
        except ValueError as error:
            if isinstance(error, ConfigError):
                raise
            raise ConfigError(f"'{name}': {key!r} is not an id") from None
    return routes


# ---------------------------------------------------------------------------------------------
# Events: resource, ids, time, key
# ---------------------------------------------------------------------------------------------


def resource_of(event: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]] | None:
    """``("job", {...})`` for an ``*:job`` event, and so on; None for others (ping, issues...)."""
    name = str(event.get("event", ""))
    kind = name.partition(":")[2]
    if kind in _RESOURCES and isinstance(event.get(kind), dict):
        return kind, event[kind]
    return None


def scope_ids(event: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """(project id, task id) the event's resource belongs to; either may be None."""
    resource = resource_of(event)
    if resource is None:
        return None, None
    kind, obj = resource
    if kind == "job":
        return _int_or_none(obj.get("project_id")), _int_or_none(obj.get("task_id"))
    if kind == "task":
        return _int_or_none(obj.get("project_id")), _int_or_none(obj.get("id"))
    return _int_or_none(obj.get("id")), None


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def event_time(event: Mapping[str, Any]) -> datetime | None:
    """When the change happened in CVAT: the resource's ``updated_date`` (UTC), if present."""
    resource = resource_of(event)
    text = resource[1].get("updated_date") if resource else None
    if not isinstance(text, str):
        return None
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def event_key(event: Mapping[str, Any]) -> str:
    """A short digest that is the same for a delivery and its redeliveries.

    CVAT has no delivery id header, and a redelivery re-serializes the stored payload (key order
    may differ), so the key is over the meaning, not the bytes: event name, webhook, resource
    kind and id, its ``updated_date`` and what changed (``before_update``), as canonical JSON.
    """
    resource = resource_of(event)
    kind, obj = resource if resource else ("", {})
    material = {
        "event": event.get("event"),
        "webhook_id": event.get("webhook_id"),
        "kind": kind,
        "id": obj.get("id"),
        "updated_date": obj.get("updated_date"),
        "before_update": event.get("before_update"),
    }
    if resource is None:  # no resource to name it by: the whole body is the identity
        material["body"] = event
    canonical = json.dumps(material, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# The decision
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """What to do with one verified event: ``trigger`` (with dag, conf, run id) or ``ignore``."""

    action: str  # "trigger" | "ignore"
    reason: str
    dag_id: str | None = None
    conf: Mapping[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    route: str | None = None
    key: str | None = None
    note: str | None = None


def decide(event: Mapping[str, Any], config: BridgeConfig, received_at: datetime) -> Decision:
    """Route the event, apply the route's rules, and name the run it belongs to."""
    name = event.get("event")
    if name == "ping":
        return Decision("ignore", "ping")
    project_id, task_id = scope_ids(event)
    route_config = _route_config(config, project_id, task_id)
    if not route_config.enabled:
        return Decision("ignore", f"routing disabled for {_where(project_id, task_id)}")
    rules = route_config.rules if route_config.rules is not None else config.rules
    if not any(rule.matches(event) for rule in rules):
        return Decision("ignore", f"no rule matches this {name} event")
    if project_id is None and task_id is None:
        return Decision("ignore", f"{name} event names no task or project to retrain on")
    scope = route_config.scope or ("project" if project_id is not None else "task")
    if scope == "project" and project_id is None:
        scope = "task"
    if scope == "task" and task_id is None:
        scope = "project"
    route = f"project_{project_id}" if scope == "project" else f"task_{task_id}"
    base = {"project_id": project_id} if scope == "project" else {"task_ids": [task_id]}
    key = event_key(event)
    cooldown = route_config.cooldown_seconds
    cooldown = config.cooldown_seconds if cooldown is None else cooldown
    changed_at = event_time(event) or received_at
    return Decision(
        "trigger",
        f"{name} matched a rule",
        dag_id=route_config.dag_id or config.dag_id,
        conf={**base, **config.conf, **route_config.conf},
        run_id=run_id_for(route, changed_at, key, cooldown),
        route=route,
        key=key,
        note=describe(event),
    )


def _route_config(config: BridgeConfig, project_id: int | None, task_id: int | None) -> RouteConfig:
    """The most specific entry: the task's, then the project's, then the defaults."""
    if task_id is not None and task_id in config.tasks:
        return config.tasks[task_id]
    if project_id is not None and project_id in config.projects:
        return config.projects[project_id]
    return RouteConfig()


def _where(project_id: int | None, task_id: int | None) -> str:
    return f"task {task_id}" if task_id is not None else f"project {project_id}"


def run_id_for(route: str, changed_at: datetime, key: str, cooldown_seconds: int) -> str:
    """The run id every event of ``route`` in the same cool-down window shares (see module doc)."""
    if cooldown_seconds <= 0:
        return f"{RUN_ID_PREFIX}{route}__{key}"
    stamp = changed_at.astimezone(UTC).timestamp()
    start = datetime.fromtimestamp(math.floor(stamp / cooldown_seconds) * cooldown_seconds, tz=UTC)
    return f"{RUN_ID_PREFIX}{route}__{start:%Y%m%dT%H%M%SZ}"


def describe(event: Mapping[str, Any]) -> str:
    """One line for the run's note and the log: what happened in CVAT, by whom (never secrets)."""
    resource = resource_of(event)
    parts = [f"CVAT webhook {event.get('event')}"]
    if resource is not None:
        kind, obj = resource
        parts.append(f"{kind} {obj.get('id')}")
        project_id, task_id = scope_ids(event)
        if kind == "job" and task_id is not None:
            parts.append(f"of task {task_id}")
        if project_id is not None and kind != "project":
            parts.append(f"(project {project_id})")
        before = event.get("before_update") or {}
        changes = [f"{k} {before[k]} -> {obj.get(k)}" for k in ("state", "stage", "status") if k in before]
        if changes:
            parts.append(": " + ", ".join(changes))
    sender = event.get("sender")
    if isinstance(sender, dict) and sender.get("username"):
        parts.append(f"by {sender['username']}")
    return " ".join(parts).replace(" : ", ": ")
