"""The command line: ``python -m airflow_cvat.trainer.preannotate``; see the package docstring.

The request (flags, checks) is :mod:`airflow_cvat.preannotation_request`'s, the ending
:mod:`airflow_cvat.envelope`'s, both shared with the operator that reads the result.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

from airflow_cvat import cvat_policy
from airflow_cvat.envelope import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, BadInput, crash, emit, failure
from airflow_cvat.preannotation_request import PreAnnotationRequest
from airflow_cvat.trainer.preannotate.annotator import Annotator
from airflow_cvat.trainer.preannotate.cvat_client import make_client
from airflow_cvat.trainer.preannotate.model import Detector, fetch_model

log = logging.getLogger("airflow_cvat.preannotate")


def run(options: PreAnnotationRequest, env: Mapping[str, str]) -> dict[str, Any]:
    """Credentials first (cheap), then the model, then CVAT: bad input fails before heavy work."""
    cvat_policy.Credentials.from_env(env)
    with tempfile.TemporaryDirectory(prefix="airflow-cvat-preannotate-") as scratch:
        model = fetch_model(options.model_uri, scratch)
        client = make_client(options.cvat_url, env, options.workers)
        log.info("model %s (%d classes); CVAT %s", model.version_uri, len(model.classes), options.cvat_url)
        with client:
            detector = Detector(model.saved_model)
            return Annotator(options, client, detector, model).run()


def configure_logging() -> None:
    """Progress on stderr, with TensorFlow's and urllib3's chatter turned down."""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("absl", "tensorflow", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the request; always end with the envelope's JSON line (exit 0, 1, or 2 for bad input)."""
    configure_logging()
    result_file = None
    try:
        options = PreAnnotationRequest.from_argv(argv)
        result_file = options.result_file
        return emit(run(options, dict(os.environ)), EXIT_OK, result_file)
    except BadInput as error:
        return emit(failure(str(error)), EXIT_BAD_INPUT, result_file)
    except SystemExit as error:  # argparse: usage errors are bad input too
        if error.code in (0, None):
            raise
        return emit(failure("invalid command line (see usage above)"), EXIT_BAD_INPUT)
    except Exception as error:  # noqa: BLE001 - the pod must always end with a JSON line
        traceback.print_exc(file=sys.stderr)
        return emit(crash(error), EXIT_FAILED, result_file)
