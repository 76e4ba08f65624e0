"""The branch that follows the training task the run plan's ``execution`` names.

Apart from :mod:`airflow_cvat.operators.config` because only a deployment with Kubernetes needs a
branch, and ``BaseBranchOperator`` costs parse time every other DAG need not pay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk.bases.branch import BaseBranchOperator

if TYPE_CHECKING:
    from airflow.sdk import Context


class TrainingBackendBranchOperator(BaseBranchOperator):
    """Follow the training task the run plan's ``execution`` names (``train_{execution}``)."""

    def __init__(self, *, config_task_id: str = "config", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config_task_id = config_task_id

    def choose_branch(self, context: Context) -> str:
        plan = context["ti"].xcom_pull(task_ids=self.config_task_id)
        return "train_kubernetes" if plan["execution"] == "kubernetes" else "train_local"
