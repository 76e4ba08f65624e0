"""``python -m airflow_cvat.trainer``: see :mod:`airflow_cvat.trainer.cli`."""

import sys

from airflow_cvat.trainer.cli import main

if __name__ == "__main__":
    sys.exit(main())
