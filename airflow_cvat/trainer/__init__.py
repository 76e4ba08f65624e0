"""The side that runs inside the training pod: TensorFlow and the Model Garden, never Airflow.

Entry point: ``python -m airflow_cvat.trainer`` (see :mod:`airflow_cvat.trainer.cli`).
"""
