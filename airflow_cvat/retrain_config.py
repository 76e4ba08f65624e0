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
from datetime import datetime, timedelta
from typing import Any

from airflow_cvat import coercion
from airflow_cvat.catalog import DEFAULT_MODEL
from airflow_cvat.training_plan import PlanError, TrainingPlan, plan_training

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
    machine: dict[str, Any] | None = None
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

    @property
    def training_plan(self) -> TrainingPlan:
        """What the training task runs as given: config already merged, parsed and chose."""
        return TrainingPlan.from_dict(asdict(self))

    def to_dict(self) -> dict[str, Any]:
        """The run plan as downstream tasks read it, by key (an XCom value, plain JSON)."""
        data = asdict(self)
        data["source_key"] = self.source_key
        data["published_name"] = self.model_name or self.model
        data["training_plan"] = self.training_plan.to_dict()
        return data


def resolve(
    conf: dict[str, Any],
    defaults: dict[str, Any],
    *,
    machine_types: str | dict | None = None,
) -> RetrainConfig:
    """Merge (param defaults < deployment settings < the run's conf) and validate everything.

    Every problem is collected and reported in one ConfigError, so a person fixes them all at
    once instead of learning them one failed run at a time.
    """
    problems: list[str] = []
    unknown = sorted(set(conf) - set(CONF_KEYS))
    if unknown:
        problems.append(
            f"unknown conf keys {unknown}: remove them or fix the spelling; "
            f"valid keys: {', '.join(CONF_KEYS)}"
        )
    merged = merge(conf, defaults)
    if not merged.get("root"):
        problems.append(
            "no artifact root: set 'root' in the cvat_retrain Variable (Admin > Variables), "
            'e.g. {"root": "s3://bucket/cvat"} or {"root": "file:///data/cvat"}'
        )

    def checked(convert: Any, *args: Any, fallback: Any = None) -> Any:
        try:
            return convert(*args)
        except ConfigError as error:
            problems.append(str(error))
            return fallback

    config = RetrainConfig(
        root=str(merged.get("root") or "").rstrip("/"),
        model=str(merged.get("model") or DEFAULT_MODEL),
        arguments=str(merged.get("arguments") or ""),
        execution=str(merged.get("execution") or "local"),
        task_ids=checked(parse_ids, merged.get("task_ids"), "task_ids", fallback=[]),
        project_id=checked(_optional_int, merged.get("project_id"), "project_id"),
        source_uri=merged.get("source_uri") or None,
        machine_type=merged.get("machine_type") or None,
        num_clones=checked(_optional_int, merged.get("num_clones"), "num_clones") or 1,
        emails=checked(_emails, merged.get("emails"), fallback=[]),
        only_finished=checked(_bool, merged.get("only_finished", True), "only_finished", fallback=True),
        catalog_file=merged.get("catalog_file") or None,
        model_name=merged.get("model_name") or None,
        pre_annotate=checked(_bool, merged.get("pre_annotate", False), "pre_annotate", fallback=False),
        pre_annotate_task_ids=checked(
            parse_ids, merged.get("pre_annotate_task_ids"), "pre_annotate_task_ids", fallback=[]
        ),
        pre_annotate_threshold=checked(_threshold, merged.get("pre_annotate_threshold", 0.5), fallback=0.5),
    )
    problems += _check_source(config)
    problems += _check_training(config, machine_types)
    problems += _check_pre_annotation(config)
    if problems:
        raise ConfigError(_problems_message(problems))
    return config


def merge(conf: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """The run's non-empty conf values over the defaults.

    A run that names its source replaces the deployment's nightly source rather than adding to
    it; "default" for execution means the deployment's default (the form's first choice).
    """
    given = {k: v for k, v in conf.items() if not _empty(v) and not (k == "execution" and v == "default")}
    if any(key in given for key in SOURCE_KEYS):
        defaults = {k: v for k, v in defaults.items() if k not in SOURCE_KEYS}
    return {**defaults, **given}


def has_source(conf: dict[str, Any], defaults: dict[str, Any]) -> bool:
    """Whether the run's conf or the deployment's settings name anything to train on."""
    merged = merge(conf, defaults)
    return any(not _empty(merged.get(key)) for key in SOURCE_KEYS)


LATE_SCHEDULED_RUN = timedelta(hours=2)
"""A scheduled run starting this long after it was due is a catch-up, not a nightly run: Airflow
creates the latest missed run the moment a DAG is unpaused (the trigger form unpauses by default),
and a person who only meant to trigger once must not get a training they did not ask for."""


def scheduled_skip_reason(
    conf: dict[str, Any], defaults: dict[str, Any], *, due: datetime, started: datetime
) -> str | None:
    """Why a scheduled run should skip rather than train (None: it should run).

    A fresh deployment has no source yet, and a nightly failure email for that would be noise;
    a run started long after its time is the catch-up run that unpausing creates.
    """
    if not has_source(conf, defaults):
        return (
            "nothing to train on: this scheduled run has no source. Set one in the cvat_retrain Variable "
            '(Admin > Variables), e.g. {"root": "s3://bucket/cvat", "task_ids": "12, 13"} or '
            '{"root": "s3://bucket/cvat", "project_id": 4}, or set CVAT_RETRAIN_SCHEDULE=none to switch '
            "the schedule off. Manual runs name their source in the trigger form."
        )
    late = started - due
    if late > LATE_SCHEDULED_RUN:
        hours = late.total_seconds() / 3600
        return (
            f"this scheduled run started {hours:.1f} h after it was due ({due.isoformat()}), as happens "
            "when the DAG has just been unpaused (e.g. by 'Unpause on trigger' in the trigger form) or the "
            "scheduler was down; it skips so that unpausing never starts a training by surprise. The next "
            "scheduled run trains at its time; trigger a run by hand to train now."
        )
    return None


def _problems_message(problems: list[str]) -> str:
    if len(problems) == 1:
        return f"cannot start this run: {problems[0]}"
    listed = "\n".join(f"  {number}. {problem}" for number, problem in enumerate(problems, 1))
    return f"cannot start this run, {len(problems)} problems (fix them all, then trigger again):\n{listed}"


_empty = coercion.is_empty


def _check_pre_annotation(config: RetrainConfig) -> list[str]:
    """Which tasks the new model pre-annotates: those given, else the run's own source tasks.

    A project source pre-annotates the project's tasks (listed when the step runs); an export
    already in storage names no CVAT task, so the tasks must be given.
    """
    if not config.pre_annotate or config.pre_annotate_task_ids:
        return []
    if config.task_ids:
        config.pre_annotate_task_ids = list(config.task_ids)
    elif config.project_id is not None:
        config.pre_annotate_project_id = config.project_id
    elif config.source_uri:
        return [
            "pre_annotate is on but the source is an export in storage (source_uri), which names no "
            "CVAT task: give pre_annotate_task_ids, or switch pre_annotate off"
        ]
    return []


def _threshold(value: Any) -> float:
    try:
        threshold = float(value if value not in (None, "") else 0.5)
    except (TypeError, ValueError):
        threshold = -1.0
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"pre_annotate_threshold must be a score within 0..1 (e.g. 0.5), got {value!r}")
    return threshold


def _check_source(config: RetrainConfig) -> list[str]:
    given = [name for name in SOURCE_KEYS if getattr(config, name)]
    if len(given) == 1:
        return []
    if not given:
        return [
            "no source to train on: give task_ids (CVAT task ids, e.g. 12, 13), project_id (a CVAT "
            "project) or source_uri (a CVAT export zip in object storage) in the form or conf, or set "
            "task_ids or project_id in the cvat_retrain Variable for scheduled runs"
        ]
    return [f"give exactly one source, not {' and '.join(given)}: task_ids, project_id or source_uri"]


def _check_training(config: RetrainConfig, machine_types: str | dict | None) -> list[str]:
    """Execution, then the training plan (model, arguments, num_clones, machine), each reported."""
    problems: list[str] = []
    if config.execution not in EXECUTIONS:
        problems.append(
            f"execution must be one of {list(EXECUTIONS)} (or 'default'), got {config.execution!r}"
        )
    try:
        plan = plan_training(
            config.model,
            config.arguments,
            config.num_clones,
            catalog_file=config.catalog_file,
            kubernetes=config.execution == "kubernetes",
            machine_type=config.machine_type,
            machine_types=machine_types,
        )
    except PlanError as error:
        return problems + error.problems
    config.arguments, config.num_clones, config.training = plan.arguments, plan.num_clones, plan.training
    if plan.machine is not None:
        config.machine_type, config.machine = plan.machine.name, plan.machine.to_dict()
    return problems


def parse_ids(value: Any, name: str = "task_ids") -> list[int]:
    """CVAT ids however they come (see :func:`airflow_cvat.coercion.parse_ids`); ConfigError if not."""
    return coercion.parse_ids(value, name, ConfigError)


def _optional_int(value: Any, name: str) -> int | None:
    return coercion.optional_int(value, name, ConfigError)


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
    return coercion.parse_bool(value, name, ConfigError)
