"""The run plan's task: resolve and check the whole run first, then let later tasks read it by key.

Why classic operators and not ``@task``: the DAG file is parsed many times a minute, and
``airflow.sdk.task`` imports the standard provider's Python operators (about 100 ms, more than the
rest of the DAG file). The work itself happens in :mod:`airflow_cvat.retrain_config`, standard
library only; this module only reads what a task run has (the Variable, the run's conf, params).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_cvat.operators.lazy import lazy_attributes

if TYPE_CHECKING:
    from airflow.sdk import Context

SETTINGS_VARIABLE = "cvat_retrain"
"""The deployment's settings (a JSON Variable): root, sources, catalogue, mirrors..."""


class RetrainConfigOperator(BaseOperator):
    """Resolve and validate the whole run now: a typo must not cost an export or a GPU hour.

    Merges (the DAG's param defaults < the ``cvat_retrain`` Variable < the run's conf), checks all
    of it and returns the run plan (:meth:`RetrainConfig.to_dict` plus ``dataset_uri`` and
    ``run_uri``), which later tasks read by key. A scheduled run with no source, or one starting
    hours late, skips here.

    :param kubernetes_enabled: whether this deployment may train in pods (CVAT_RETRAIN_KUBERNETES).
    :param default_execution: the execution a run gets when neither its conf nor the Variable says.
    """

    ui_color = "#f4f0e8"

    def __init__(self, *, kubernetes_enabled: bool = False, default_execution: str = "local", **kwargs: Any):
        super().__init__(**kwargs)
        self.kubernetes_enabled = kubernetes_enabled
        self.default_execution = default_execution

    def execute(self, context: Context) -> dict[str, Any]:
        import pendulum
        from airflow.sdk import Variable
        from airflow.sdk.exceptions import AirflowSkipException

        from airflow_cvat.layout import dataset_uri, run_uri
        from airflow_cvat.machines import MACHINE_TYPES_VARIABLE
        from airflow_cvat.retrain_config import resolve, scheduled_skip_reason

        settings = json.loads(Variable.get(SETTINGS_VARIABLE, default="{}"))
        defaults = {**{k: v for k, v in context["params"].items() if v not in (None, [], "")}, **settings}
        defaults.setdefault("execution", self.default_execution)
        dag_run = context["dag_run"]
        conf = dict(dag_run.conf or {})
        if dag_run.run_type == "scheduled":
            now = pendulum.now("UTC")
            if reason := scheduled_skip_reason(conf, defaults, due=dag_run.run_after, started=now):
                raise AirflowSkipException(reason)
        config = resolve(conf, defaults, machine_types=Variable.get(MACHINE_TYPES_VARIABLE, default=None))
        if config.execution == "kubernetes" and not self.kubernetes_enabled:
            raise ValueError(
                "execution 'kubernetes' is not enabled in this deployment: set CVAT_RETRAIN_KUBERNETES=true "
                "for the dag-processor and workers (and a kubernetes_default connection), or use 'local'"
            )
        plan = config.to_dict()
        plan["dataset_uri"] = dataset_uri(config.root, config.source_key, context["run_id"])
        plan["run_uri"] = run_uri(config.root, context["run_id"])
        return plan


# The branch (only a deployment with Kubernetes has one) lives apart: BaseBranchOperator's import
# is paid only by a DAG that branches.
__getattr__ = lazy_attributes(
    globals(), {"TrainingBackendBranchOperator": "airflow_cvat.operators.training_branch"}
)
