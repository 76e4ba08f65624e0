"""Values as people and templates send them: CVAT ids, true/false, optional whole numbers.

Why one owner: the form sends ids as text ("12, 13" or one per line), REST calls and the webhook
bridge as lists or one number, and a rendered template as "[12, 13]"; when each step parsed them
its own way, the same conf passed one step and failed the next. Each function names the field in
its message and raises ``error`` (the caller's own exception class: ConfigError for config,
AirflowFailException in an operator), so callers keep their way of reporting. Standard library
only: both worlds may import it.
"""

from __future__ import annotations

import re
from typing import Any

TRUE = ("true", "1", "yes", "on")
FALSE = ("false", "0", "no", "off")
IDS_PATTERN = r"^\s*\[?[\s,]*(?:\d+(?:[\s,]+\d+)*)?[\s,]*\]?\s*$"
"""CVAT ids as the form takes them ("12, 13", "12 13" or one per line): what ``parse_ids`` reads
from text, as a JSON Schema pattern the browser checks before the form is sent."""


def is_empty(value: Any) -> bool:
    """None, an empty list or blank text: "not given" (the form sends empty fields as these)."""
    return value is None or value == [] or value == () or (isinstance(value, str) and not value.strip())


def parse_ids(value: Any, name: str, error: type[Exception] = ValueError) -> list[int]:
    """CVAT ids however they come: "12, 13" or one per line (the form), [12, 13] or ["12"]
    (REST, the webhook bridge, older confs), "[12, 13]" (a rendered template), or a single 12."""
    if is_empty(value):
        return []
    if isinstance(value, str):
        items: list[Any] = [v for v in re.split(r"[\s,]+", value.strip().strip("[]")) if v]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        items = [value]
    ids = [_id(item) for item in items]
    if None in ids:
        raise error(
            f"{name} must be CVAT ids (whole numbers from 1), e.g. 12, 13 (commas, spaces or one per "
            f"line); got {value!r}"
        )
    return ids  # type: ignore[return-value]


def _id(item: Any) -> int | None:
    if isinstance(item, bool):
        return None
    if isinstance(item, int):
        return item if item > 0 else None
    if isinstance(item, str) and item.strip().isdigit() and int(item) > 0:
        return int(item)
    return None


def optional_int(value: Any, name: str, error: type[Exception] = ValueError) -> int | None:
    """A whole number, or None when not given."""
    if value in (None, ""):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise error(f"{name} must be an integer, got {value!r}") from None


def parse_bool(value: Any, name: str, error: type[Exception] = ValueError) -> bool:
    """true/false as JSON, the form or a rendered template sends it ("True", "yes", 1...)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise error(f"{name} must be true or false, got {value!r}")
