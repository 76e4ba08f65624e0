"""Register (or update) the CVAT webhook that feeds the Airflow bridge.

    python -m airflow_cvat.webhook.register --cvat-conn-id cvat_default --project-id 1 \\
        --url https://airflow.example.com/cvat/webhook --secret-conn-id cvat_webhook

It runs where Airflow is configured (it reads two Airflow connections: the CVAT server and the
bridge's secret), talks to CVAT through cvat-sdk, and is idempotent: a webhook of the same type and
scope (project, or organization) with the same target URL is updated in place (events, secret,
TLS check, active again) rather than added a second time, so re-running after rotating the secret
is the way to push the new one. It prints the webhook id; it never prints the secret.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from airflow_cvat.webhook.rules import DEFAULT_CONN_ID

DEFAULT_EVENTS = ("update:job",)
DESCRIPTION = "Airflow retraining (airflow-provider-cvat)"


class SetupError(Exception):
    """A problem the user fixes (missing secret, CVAT refusal); printed without a traceback."""


@dataclass(frozen=True)
class Target:
    """Where the webhook lives: a project, or an organization (by slug)."""

    project_id: int | None = None
    organization: str | None = None

    @property
    def type(self) -> str:
        return "project" if self.project_id is not None else "organization"

    def describe(self) -> str:
        return (
            f"project {self.project_id}"
            if self.project_id is not None
            else f"organization {self.organization}"
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_cvat.webhook.register",
        description="Register the CVAT webhook that triggers Airflow (idempotent; never prints the secret).",
    )
    parser.add_argument(
        "--cvat-conn-id", default="cvat_default", help="Airflow connection of the CVAT server"
    )
    scope = parser.add_mutually_exclusive_group(required=True)
    scope.add_argument("--project-id", type=int, help="a project webhook for this CVAT project")
    scope.add_argument("--organization", help="an organization webhook for this organization slug")
    parser.add_argument(
        "--url", required=True, help="the bridge, e.g. https://airflow.example.com/cvat/webhook"
    )
    parser.add_argument(
        "--secret-conn-id",
        default=DEFAULT_CONN_ID,
        help="Airflow connection whose password is the shared secret (the bridge reads the same one)",
    )
    parser.add_argument(
        "--events",
        nargs="+",
        default=list(DEFAULT_EVENTS),
        help="CVAT events to send (default: update:job); comma or space separated",
    )
    parser.add_argument("--description", default=DESCRIPTION)
    parser.add_argument(
        "--no-verify-ssl",
        dest="enable_ssl",
        action="store_false",
        help="let CVAT deliver to an https URL with a self-signed certificate",
    )
    parser.add_argument(
        "--ping", action="store_true", help="ask CVAT to send a ping and show the bridge's answer"
    )
    args = parser.parse_args(argv)
    args.events = sorted({e.strip() for item in args.events for e in item.split(",") if e.strip()})
    return args


def read_secret(conn_id: str) -> str:
    """The shared secret from the connection's password (server-side lookup: env, backends, DB)."""
    from airflow.exceptions import AirflowNotFoundException
    from airflow.models.connection import Connection

    try:
        connection = Connection.get_connection_from_secrets(conn_id)
    except AirflowNotFoundException:
        raise SetupError(
            f"connection {conn_id!r} does not exist: create it with the secret as its password"
        ) from None
    if not connection.password:
        raise SetupError(f"connection {conn_id!r} has no password: put the webhook secret there")
    return connection.password


def find_existing(api: Any, target: Target, url: str) -> Any | None:
    """The webhook of this scope that already points at ``url``, if any (the newest one)."""
    from cvat_sdk.core.helpers import get_paginated_collection

    filters: dict[str, Any] = {"target_url": url, "type": target.type}
    if target.project_id is not None:
        filters["project_id"] = target.project_id
    found = [
        hook
        for hook in get_paginated_collection(api.list_endpoint, **filters)
        if hook.target_url == url
        and str(hook.type) == target.type
        and (target.project_id is None or hook.project_id == target.project_id)
    ]
    return max(found, key=lambda hook: hook.id) if found else None


def register(
    client: Any,
    target: Target,
    url: str,
    secret: str,
    *,
    events: Sequence[str],
    description: str = DESCRIPTION,
    enable_ssl: bool = True,
) -> tuple[Any, bool]:
    """Create or update the webhook through cvat-sdk; (webhook, created)."""
    from cvat_sdk.api_client import models

    if target.organization:
        client.organization_slug = target.organization
    api = client.api_client.webhooks_api
    fields = {
        "events": list(events),
        "content_type": "application/json",
        "secret": secret,
        "is_active": True,
        "enable_ssl": enable_ssl,
        "description": description,
    }
    existing = find_existing(api, target, url)
    if existing is not None:
        hook, _ = api.partial_update(
            existing.id, patched_webhook_write_request=models.PatchedWebhookWriteRequest(**fields)
        )
        return hook, False
    request = models.WebhookWriteRequest(
        target_url=url, type=target.type, project_id=target.project_id, **fields
    )
    hook, _ = api.create(webhook_write_request=request)
    return hook, True


def ping(client: Any, webhook_id: int) -> tuple[int, str]:
    """CVAT pings the target now; (status the bridge answered, its body)."""
    delivery, _ = client.api_client.webhooks_api.create_ping(webhook_id)
    return int(delivery.status_code or 0), str(delivery.response or "")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    target = Target(project_id=args.project_id, organization=args.organization)
    try:
        return run(args, target)
    except SetupError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace, target: Target) -> int:
    from cvat_sdk.api_client.exceptions import ApiException, ApiValueError

    from airflow_cvat.hooks.cvat import CVATHook

    secret = read_secret(args.secret_conn_id)
    client = CVATHook(args.cvat_conn_id).client
    try:
        hook, created = register(
            client,
            target,
            args.url,
            secret,
            events=args.events,
            description=args.description,
            enable_ssl=args.enable_ssl,
        )
    except ApiException as error:
        raise SetupError(f"CVAT refused the webhook ({error.status}): {_body(error)}") from None
    except ApiValueError as error:  # cvat-sdk checks event names against CVAT's schema
        raise SetupError(f"invalid webhook settings: {str(error).splitlines()[0][:300]}") from None
    verb = "created" if created else "updated"
    events = ", ".join(str(event) for event in hook.events)
    print(f"webhook {hook.id} {verb}: {target.describe()} -> {hook.target_url} (events: {events})")
    if args.ping:
        status, body = ping(client, hook.id)
        print(f"ping: the bridge answered {status} {body}")
        return 0 if 200 <= status < 300 else 1
    return 0


def _body(error: Any) -> str:
    body = getattr(error, "body", None)
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    return str(body or error.reason)[:500]


if __name__ == "__main__":
    sys.exit(main())
