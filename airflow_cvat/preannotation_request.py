"""The pre-annotation request: what the operator asks of ``python -m airflow_cvat.trainer.preannotate``.

One owner for both sides of that command line: the choices it accepts, the checks (every problem
at once, so a person fixes the request in one go), the argv the operator builds
(:meth:`PreAnnotationRequest.to_argv`) and the command reads back
(:meth:`PreAnnotationRequest.from_argv`), and where a published model is looked for
(:func:`locate_model`). Two copies of these rules drifted apart before; now the operator refuses
exactly what the command would refuse, before a process or pod starts.

Standard library only: the Airflow side imports it without numpy or TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from airflow_cvat.envelope import BadInput

MODULE = "airflow_cvat.trainer.preannotate"
JOB_STATES = ("new", "in progress", "completed", "rejected")
EXISTING_MODES = ("skip", "replace")
MASK_MODES = ("polygon", "mask", "box")
QUALITIES = ("original", "compressed")
SAVED_MODEL_FILE = "saved_model/saved_model.pb"
LATEST = "LATEST"

#: Options sent on the command line only when they differ from the default (the operator does
#: not set them; a person running the command by hand may).
TUNING = ("quality", "upload_every", "workers")
#: Fields the command line gives as they are (the others are lists or URLs to normalise).
AS_GIVEN = ("model_uri", "threshold", "batch_size", "existing", "masks", "result_file", *TUNING)


class RequestError(BadInput):
    """The request cannot work as given; the message lists every problem, one per clause."""


class ModelNotFound(BadInput):
    """Nothing published where the request points: the publish step has not run for that model."""


@dataclass(frozen=True)
class PreAnnotationRequest:
    """The command's options; field names are the flags without ``--`` and with ``_`` for ``-``."""

    model_uri: str
    cvat_url: str
    task_ids: tuple[int, ...]
    job_ids: tuple[int, ...] = ()
    job_states: tuple[str, ...] = ("new",)
    threshold: float = 0.5
    batch_size: int = 16
    existing: str = "skip"
    masks: str = "polygon"
    quality: str = "original"
    upload_every: int = 64
    workers: int = 4
    result_file: str | None = None

    # -- checks -------------------------------------------------------------------------------

    def option_problems(self, name: Callable[[str], str] = str) -> list[str]:
        """What is wrong with the options (not the target): ``name`` spells a field for the reader."""
        problems = []
        unknown = [s for s in self.job_states if s not in JOB_STATES]
        if not self.job_states or unknown:
            problems.append(
                f"{name('job_states')}: {unknown or 'none given'}; choose from {', '.join(JOB_STATES)}"
            )
        if not _number(self.threshold) or not 0.0 <= self.threshold <= 1.0:
            problems.append(f"{name('threshold')} must be within 0..1, got {self.threshold!r}")
        for field in ("batch_size", "upload_every", "workers"):
            value = getattr(self, field)
            if not _whole(value) or value < 1:
                problems.append(f"{name(field)} must be a whole number of at least 1, got {value!r}")
        for field, choices in (("existing", EXISTING_MODES), ("masks", MASK_MODES), ("quality", QUALITIES)):
            if getattr(self, field) not in choices:
                problems.append(
                    f"{name(field)} must be one of {', '.join(choices)}, got {getattr(self, field)!r}"
                )
        if not _ids(self.job_ids):
            problems.append(f"{name('job_ids')} must be positive CVAT job ids, got {list(self.job_ids)}")
        return problems

    def target_problems(self, name: Callable[[str], str] = str) -> list[str]:
        """What is wrong with where the request points: the model, the server, the tasks."""
        problems = []
        if not self.model_uri:
            problems.append(f"{name('model_uri')} is empty")
        if not self.cvat_url.startswith(("http://", "https://")):
            problems.append(f"{name('cvat_url')} must start with http:// or https://, got {self.cvat_url!r}")
        if not self.task_ids or not _ids(self.task_ids):
            problems.append(f"{name('task_id')} must be positive CVAT task ids, got {list(self.task_ids)}")
        return problems

    def validated(self, name: Callable[[str], str] = str) -> PreAnnotationRequest:
        """This request, or RequestError listing every problem."""
        problems = self.target_problems(name) + self.option_problems(name)
        if problems:
            raise RequestError("; ".join(problems))
        return self

    # -- the command line ----------------------------------------------------------------------

    def to_argv(self) -> list[str]:
        """The command's arguments (without ``python -m``); never credentials."""
        argv = ["--model-uri", self.model_uri, "--cvat-url", self.cvat_url]
        for task_id in self.task_ids:
            argv += ["--task-id", str(task_id)]
        argv += ["--job-states", ",".join(self.job_states), "--threshold", str(self.threshold)]
        argv += ["--batch-size", str(self.batch_size), "--existing", self.existing, "--masks", self.masks]
        if self.job_ids:
            argv += ["--job-ids", ",".join(map(str, self.job_ids))]
        defaults = {f.name: f.default for f in fields(self)}
        for field in TUNING:
            if getattr(self, field) != defaults[field]:
                argv += [flag(field), str(getattr(self, field))]
        if self.result_file:
            argv += ["--result-file", self.result_file]
        return argv

    @classmethod
    def from_argv(cls, argv: Sequence[str] | None) -> PreAnnotationRequest:
        """Parse and check; RequestError names the flags (argparse's own usage errors exit 2)."""
        ns = build_parser().parse_args(argv)
        try:
            job_ids = tuple(int(j) for j in ns.job_ids.split(",") if j.strip())
        except ValueError:
            raise RequestError(f"--job-ids must be comma-separated integers, got {ns.job_ids!r}") from None
        as_given = {name: getattr(ns, name) for name in AS_GIVEN}
        request = cls(
            cvat_url=ns.cvat_url.rstrip("/"),
            task_ids=tuple(dict.fromkeys(ns.task_id)),
            job_ids=job_ids,
            job_states=tuple(s.strip() for s in ns.job_states.split(",") if s.strip()),
            **as_given,
        )
        return request.validated(flag)

    def with_target(
        self, cvat_url: str, task_ids: Sequence[int], result_file: str | None
    ) -> PreAnnotationRequest:
        """The same options aimed at a server and tasks known only when the task runs."""
        return replace(self, cvat_url=cvat_url, task_ids=tuple(task_ids), result_file=result_file)


def flag(field: str) -> str:
    """A field as the command's flag: ``batch_size`` -> ``--batch-size``."""
    return "--" + field.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    """The command's flags; the choices come from this module's constants."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description="Pre-annotate a CVAT task's unannotated jobs with a published model. "
        "Credentials: CVAT_ACCESS_TOKEN, or CVAT_USERNAME and CVAT_PASSWORD; CVAT_ORGANIZATION.",
    )
    parser.add_argument("--model-uri", required=True, help="version folder, model folder or LATEST file")
    parser.add_argument("--cvat-url", required=True)
    parser.add_argument(
        "--task-id", required=True, type=int, action="append", help="a CVAT task id; repeat for several"
    )
    parser.add_argument(
        "--job-states", default="new", help="comma-separated job states to annotate (default: new)"
    )
    parser.add_argument("--job-ids", default="", help="comma-separated job ids: only these jobs")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=16, help="frames per model call")
    parser.add_argument("--upload-every", type=int, default=64, help="frames per upload request")
    parser.add_argument("--existing", choices=EXISTING_MODES, default="skip")
    parser.add_argument("--masks", choices=MASK_MODES, default="polygon", help="Mask R-CNN output as")
    parser.add_argument("--quality", choices=QUALITIES, default="original")
    parser.add_argument("--workers", type=int, default=4, help="parallel frame downloads")
    parser.add_argument("--result-file")
    return parser


# -- where the model is -----------------------------------------------------------------------


def locate_model(uri: str, exists: Callable[[str], bool]) -> tuple[str, bool]:
    """(URI, is it a version folder): the version folder itself, else the LATEST file to read.

    Why three forms: the DAG passes ``{root}/models/{name}`` (LATEST is read when the command
    runs, not at parse time), people pass a version folder to pin one, and LATEST's own URI is
    what the publish step's XCom shows. ``exists`` answers for a URI (each side has its storage).
    """
    uri = uri.rstrip("/")
    if exists(f"{uri}/{SAVED_MODEL_FILE}"):
        return uri, True
    latest = uri if uri.endswith(f"/{LATEST}") else f"{uri}/{LATEST}"
    if exists(latest):
        return latest, False
    raise ModelNotFound(
        f"no model at {uri} (no published model: expected a version folder with saved_model/ and "
        "label_map.json, a model folder with LATEST, or a LATEST file; has the publish step run for "
        "this model name?)"
    )


def version_of(latest_uri: str, text: str) -> str:
    """The version folder a LATEST file (``{"version": ...}``) names."""
    try:
        version = str(json.loads(text)["version"])
    except (ValueError, KeyError, TypeError):
        raise ModelNotFound(f'{latest_uri} is not JSON naming a version ({{"version": ...}})') from None
    return f"{latest_uri.rsplit('/', 1)[0]}/{version}"


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _ids(values: Sequence[Any]) -> bool:
    return all(_whole(v) and v >= 1 for v in values)
