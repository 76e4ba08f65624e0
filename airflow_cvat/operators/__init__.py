"""The provider's operators, one module per step.

The DAG file imports these modules on every parse, so each imports at its top only what its
classes' definitions need; hooks, storage, the catalogue and the Kubernetes provider load when a
task runs (see :mod:`airflow_cvat.operators.lazy`).
"""

DEFAULT_CVAT_CONN_ID = "cvat_default"
"""``CVATHook.default_conn_name``, named here so that operator signatures need not import the hook."""
