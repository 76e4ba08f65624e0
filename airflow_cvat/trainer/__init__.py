"""The side that runs inside the training pod: TensorFlow and the Model Garden, never Airflow.

Entry point: ``python -m airflow_cvat.trainer`` (see :mod:`airflow_cvat.trainer.cli`).

Every module here that loads TensorFlow is imported after this file, so the defaults below are
in place before TensorFlow reads them:

- ``TF_USE_LEGACY_KERAS=1``: the Model Garden and this trainer use tf_keras (Keras 2) only; with
  the flag ``import tensorflow`` does not also load Keras 3 and scikit-learn behind ``tf.keras``
  (`python -X importtime -c "import tensorflow"` on 2 cores: 23 s → 14 s, paid by every trainer,
  converter and pre-annotation process).
- ``TF_CPP_MIN_LOG_LEVEL=2``: TensorFlow's C++ start-up chatter stays out of task logs.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
