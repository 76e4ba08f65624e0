"""CVAT webhooks that trigger Airflow DAG runs, one module per concept.

* :mod:`airflow_cvat.webhook.rules`: what a delivery means, without I/O (signature, event rules,
  routing, run ids); standard library only.
* :mod:`airflow_cvat.webhook.bridge`: the FastAPI app the api-server mounts at ``/cvat`` and the
  ``cvat_webhook`` Airflow plugin that registers it (entry point ``airflow.plugins``).
* :mod:`airflow_cvat.webhook.register`: the command that registers the webhook in CVAT
  (``python -m airflow_cvat.webhook.register``, or ``cvat-setup-webhook``).

Nothing is imported here, so importing the rules does not pull in FastAPI or Airflow.
"""
