"""``python -m airflow_cvat.trainer.preannotate``."""

import sys

from airflow_cvat.trainer.preannotate.command import main

sys.exit(main())
