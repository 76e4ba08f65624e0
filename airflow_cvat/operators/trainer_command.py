"""The trainer's ``train`` command line, built once for both backends (a pod, a subprocess).

Why one builder: the trainer (``python -m airflow_cvat.trainer train ...``) is the only
implementation of training; :mod:`airflow_cvat.operators.training` puts these arguments in a pod
or a subprocess. Imported when a task runs, not when the DAG is parsed.
"""

from __future__ import annotations

from dataclasses import dataclass

from airflow_cvat.operators.training import TRAINER_MODULE


@dataclass(frozen=True)
class TrainerCommand:
    """The trainer's ``train`` command line, without the interpreter (each backend adds its own)."""

    dataset: str
    output: str
    model: str
    base_checkpoint: str | None = None
    arguments: str | None = None
    catalog: str | None = None
    result_file: str | None = None

    def args(self) -> list[str]:
        """Arguments after ``python -m airflow_cvat.trainer``; never credentials."""
        argv = ["train", "--dataset", self.dataset, "--output", self.output, "--model", self.model]
        for flag, value in (
            ("--base-checkpoint", self.base_checkpoint),
            ("--arguments", self.arguments),
            ("--catalog", self.catalog),
            ("--result-file", self.result_file),
        ):
            if value:
                argv += [flag, value]
        return argv

    def argv(self, python: str, module: str = TRAINER_MODULE) -> list[str]:
        return [python, "-m", module, *self.args()]
