"""How this provider talks to CVAT, wherever it runs: retries, credentials, error messages.

Both clients follow it: :class:`~airflow_cvat.hooks.cvat.CVATHook` on the Airflow side and the
pre-annotation command's client in the trainer image. One policy, so that a status retried by
one is retried by the other, and a token travels the same way (``CVAT_*`` environment
variables, never argv: argv shows in ``ps``, pod specs and logs).

Standard library only: both worlds import it; the callers build urllib3's ``Retry`` from
:func:`retry_settings`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from airflow_cvat.envelope import BadInput

#: Statuses worth retrying: the server is overloaded or restarting, not refusing us.
RETRY_STATUSES = (429, 500, 502, 503, 504)
#: Methods that may be repeated blindly: sending them twice changes nothing more than once.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})
#: The most seconds between two attempts of a request this code retries itself.
MAX_BACKOFF = 10.0

TOKEN_VARIABLE = "CVAT_ACCESS_TOKEN"
USERNAME_VARIABLE = "CVAT_USERNAME"
PASSWORD_VARIABLE = "CVAT_PASSWORD"
ORGANIZATION_VARIABLE = "CVAT_ORGANIZATION"
VERIFY_SSL_VARIABLE = "CVAT_VERIFY_SSL"
FALSE_WORDS = ("false", "0", "no")


class MissingCredentials(BadInput):
    """Neither a token nor a user and password: no request can succeed until one is given."""


def retry_settings(
    retries: int, backoff: float, methods: frozenset[str] = IDEMPOTENT_METHODS
) -> dict[str, Any]:
    """Keyword arguments for urllib3's ``Retry``: transient faults only, honouring Retry-After.

    ``raise_on_status=False``: once retries are spent the last answer reaches the caller, whose
    error names CVAT's own message instead of urllib3's "too many 503 error responses".
    """
    return {
        "total": retries,
        "connect": retries,
        "read": retries,
        "status": retries,
        "backoff_factor": backoff,
        "status_forcelist": RETRY_STATUSES,
        "allowed_methods": methods,
        "respect_retry_after_header": True,
        "raise_on_status": False,
    }


def backoff_seconds(attempt: int) -> float:
    """The wait before retry ``attempt`` (1, 2, ...) of a request retried by hand: 2, 4, 8, 10 s."""
    return min(2.0**attempt, MAX_BACKOFF)


def is_refusal(status: int | None) -> bool:
    """A 4xx other than 429: CVAT refuses the request as sent, and no retry can change that."""
    return status is not None and 400 <= status < 500 and status != 429


def error_detail(body: bytes | str | None) -> str:
    """CVAT's error answer in a line: its ``detail``, field errors as JSON, else the raw text."""
    if not body:
        return "(empty answer)"
    text = body.decode(errors="replace") if isinstance(body, bytes) else body
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:500]
    if isinstance(data, dict) and "detail" in data:
        return str(data["detail"])
    return json.dumps(data)[:500]


def parse_verify_ssl(value: Any) -> bool:
    """A verify_ssl setting from a connection extra or an environment variable; true unless said otherwise."""
    if isinstance(value, str):
        return value.strip().lower() not in FALSE_WORDS
    return bool(value)


@dataclass(frozen=True)
class Credentials:
    """Who to log in as: a personal access token, or a user and password; and where.

    ``repr`` hides the secret: a credentials object in a log or a traceback leaks nothing.
    """

    token: str | None = None
    username: str | None = None
    password: str | None = None
    organization: str | None = None
    verify_ssl: bool = True

    def __repr__(self) -> str:
        kind = "token" if self.token else f"user {self.username!r}"
        return f"Credentials({kind}, organization={self.organization!r}, verify_ssl={self.verify_ssl})"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Credentials:
        """The ``CVAT_*`` variables; MissingCredentials when neither a token nor a user and password."""
        token = env.get(TOKEN_VARIABLE) or None
        username, password = env.get(USERNAME_VARIABLE) or None, env.get(PASSWORD_VARIABLE) or None
        if not token and not (username and password):
            raise MissingCredentials(
                f"no CVAT credentials: set {TOKEN_VARIABLE} (a personal access token), or "
                f"{USERNAME_VARIABLE} and {PASSWORD_VARIABLE}, in the environment (never on the command line)"
            )
        return cls(
            token=token,
            username=None if token else username,
            password=None if token else password,
            organization=env.get(ORGANIZATION_VARIABLE) or None,
            verify_ssl=parse_verify_ssl(env.get(VERIFY_SSL_VARIABLE, "true")),
        )

    def to_env(self) -> dict[str, str]:
        """The variables :meth:`from_env` reads: for a child process's environment, never its argv."""
        if self.token:
            env = {TOKEN_VARIABLE: self.token}
        else:
            env = {USERNAME_VARIABLE: self.username or "", PASSWORD_VARIABLE: self.password or ""}
        if self.organization:
            env[ORGANIZATION_VARIABLE] = self.organization
        env[VERIFY_SSL_VARIABLE] = "true" if self.verify_ssl else "false"
        return env
