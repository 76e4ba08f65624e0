"""One retraining run's configuration: deployment defaults merged with the run's conf, validated.

The DAG's first task calls `resolve`, so a typo in the arguments string, an unknown model or a
machine without enough GPUs fails in milliseconds, before any export, download or pod. The same
schema serves the UI form (the DAG's params), the REST API and the webhook bridge. Standard
library only: no Airflow, no TensorFlow.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from airflow_cvat.arguments import ArgumentError, parse_arguments, split_arguments
from airflow_cvat.catalog import CatalogError, load_catalog
from airflow_cvat.machines import MachineTypeError, choose_machine, load_machine_types

EXECUTIONS = ("local", "kubernetes")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

#: The keys a run's conf may hold (the DAG's params); anything else is refused as a likely typo.
CONF_KEYS = (
    "task_ids",
    "project_id",
    "source_uri",
    "model",
    "arguments",
    "machine_type",
    "num_clones",
    "emails",
    "only_finished",
    "execution",
    "pre_annotate",
    "pre_annotate_task_ids",
    "pre_annotate_threshold",
)
SOURCE_KEYS = ("task_ids", "project_id", "source_uri")
#: Deployment settings, from the `cvat_retrain` Variable, never from a run's conf.
SETTING_KEYS = ("root", "catalog_file", "model_name")


class ConfigError(ValueError):
    """The run's configuration is wrong; the message says what and how to fix it."""


@dataclass
class RetrainConfig:
    root: str
    model: str
    arguments: str
    execution: str
    task_ids: list[int] = field(default_factory=list)
    project_id: int | None = None
    source_uri: str | None = None
    machine_type: str | None = None
    num_clones: int = 1
    emails: list[str] = field(default_factory=list)
    only_finished: bool = True
    catalog_file: str | None = None
    model_name: str | None = None
    training: dict[str, Any] = field(default_factory=dict)
    pre_annotate: bool = False
    pre_annotate_task_ids: list[int] = field(default_factory=list)
    pre_annotate_project_id: int | None = None
    pre_annotate_threshold: float = 0.5

    @property
    def source_key(self) -> str:
        """A stable folder name per source, so exports of the same source can be compared."""
        if self.project_id is not None:
            return f"project-{self.project_id}"
        if self.task_ids:
            return "tasks-" + "-".join(map(str, sorted(self.task_ids)))
        return "storage-" + hashlib.sha256((self.source_uri or "").encode()).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["source_key"] = self.source_key
        data["published_name"] = self.model_name or self.model
        return data


def resolve(
    conf: dict[str, Any],
    defaults: dict[str, Any],
    *,
    machine_types: str | dict | None = None,
) -> RetrainConfig:
    """Merge (param defaults < deployment settings < the run's conf) and validate everything."""
    unknown = sorted(set(conf) - set(CONF_KEYS))
    if unknown:
        raise ConfigError(f"unknown conf keys {unknown}; valid keys: {', '.join(CONF_KEYS)}")
    given = {k: v for k, v in conf.items() if v not in (None, "", [])}
    if any(key in given for key in SOURCE_KEYS):
        # A run that names its source replaces the deployment's nightly source, not adds to it.
        defaults = {k: v for k, v in defaults.items() if k not in SOURCE_KEYS}
    merged = {**defaults, **given}
    if not merged.get("root"):
        raise ConfigError(
            "no artifact root: set 'root' in the cvat_retrain Variable "
            "(e.g. s3://bucket/cvat or file:///data/cvat)"
        )
    config = RetrainConfig(
        root=str(merged["root"]).rstrip("/"),
        model=str(merged.get("model") or "ssd-mobilenet-v2-coco"),
        arguments=str(merged.get("arguments") or ""),
        execution=str(merged.get("execution") or "local"),
        task_ids=_ids(merged.get("task_ids")),
        project_id=_optional_int(merged.get("project_id"), "project_id"),
        source_uri=merged.get("source_uri") or None,
        machine_type=merged.get("machine_type") or None,
        num_clones=_optional_int(merged.get("num_clones"), "num_clones") or 1,
        emails=_emails(merged.get("emails")),
        only_finished=_bool(merged.get("only_finished", True), "only_finished"),
        catalog_file=merged.get("catalog_file") or None,
        model_name=merged.get("model_name") or None,
        pre_annotate=_bool(merged.get("pre_annotate", False), "pre_annotate"),
        pre_annotate_task_ids=_ids(merged.get("pre_annotate_task_ids"), "pre_annotate_task_ids"),
        pre_annotate_threshold=_threshold(merged.get("pre_annotate_threshold", 0.5)),
    )
    _check_source(config)
    _check_training(config, machine_types)
    _check_pre_annotation(config)
    return config


def _check_pre_annotation(config: RetrainConfig) -> None:
    """Which tasks the new model pre-annotates: those given, else the run's own source tasks.

    A project source pre-annotates the project's tasks (listed when the step runs); an export
    already in storage names no CVAT task, so the tasks must be given.
    """
    if not config.pre_annotate or config.pre_annotate_task_ids:
        return
    if config.task_ids:
        config.pre_annotate_task_ids = list(config.task_ids)
    elif config.project_id is not None:
        config.pre_annotate_project_id = config.project_id
    else:
        raise ConfigError(
            "pre_annotate is on but the source is an export in storage (source_uri), which names no "
            "CVAT task: give pre_annotate_task_ids"
        )


def _threshold(value: Any) -> float:
    try:
        threshold = float(value if value not in (None, "") else 0.5)
    except (TypeError, ValueError):
        threshold = -1.0
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"pre_annotate_threshold must be a score within 0..1, got {value!r}")
    return threshold


def _check_source(config: RetrainConfig) -> None:
    given = [name for name in SOURCE_KEYS if getattr(config, name)]
    if len(given) != 1:
        raise ConfigError(
            "give exactly one source: task_ids (CVAT task ids), project_id (a CVAT project), or "
            f"source_uri (a CVAT export zip in object storage); got {given or 'none'}"
        )


def _check_training(config: RetrainConfig, machine_types: str | dict | None) -> None:
    if config.execution not in EXECUTIONS:
        raise ConfigError(f"execution must be one of {list(EXECUTIONS)}, got {config.execution!r}")
    try:
        catalog = load_catalog(config.catalog_file)
        config.arguments = _with_clones(config.arguments, config.num_clones)
        args = parse_arguments(config.model, config.arguments, catalog=catalog)
    except (ArgumentError, CatalogError) as err:
        raise ConfigError(f"bad training arguments: {err}") from None
    config.num_clones = args.num_clones
    if config.execution == "kubernetes":
        try:
            types = load_machine_types(machine_types)
            config.machine_type = choose_machine(types, config.machine_type, args.num_clones).name
        except MachineTypeError as err:
            raise ConfigError(str(err)) from None
    config.training = args.to_dict()


def _with_clones(arguments: str, num_clones: int) -> str:
    """The num_clones param and the string's num_clones must agree; the string gets the value."""
    given = split_arguments(arguments).get("num_clones")
    if given is None:
        return ";".join(part for part in (arguments.strip().rstrip(";"), f"num_clones={num_clones}") if part)
    if num_clones != 1 and str(num_clones) != given:
        raise ArgumentError(
            f"num_clones is {num_clones} in the form but {given} in the arguments string; give it once"
        )
    return arguments


def _ids(value: Any, name: str = "task_ids") -> list[int]:
    if value in (None, "", []):
        return []
    items = value if isinstance(value, list) else [v for v in str(value).strip("[]").split(",") if v.strip()]
    try:
        return [int(v) for v in items]
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a list of CVAT task ids (integers), got {value!r}") from None


def _optional_int(value: Any, name: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None


def _emails(value: Any) -> list[str]:
    if not value:
        return []
    items = [value] if isinstance(value, str) else list(value)
    emails = [e.strip() for item in items for e in str(item).split(",") if e.strip()]
    bad = [e for e in emails if not _EMAIL.match(e)]
    if bad:
        raise ConfigError(f"not email addresses: {bad}")
    return emails


def _bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes"):
        return True
    if str(value).lower() in ("false", "0", "no"):
        return False
    raise ConfigError(f"{name} must be true or false, got {value!r}")
