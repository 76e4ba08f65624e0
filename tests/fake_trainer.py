"""A stand-in for ``python -m airflow_cvat.trainer`` that trains nothing (no TensorFlow).

LocalTrainingOperator runs it through ``trainer_module="tests.fake_trainer"``. It records what it
received (argv, and the AWS/PYTHON variables of its environment) as JSON in the file named by
FAKE_TRAINER_RECORD, prints a few progress lines, and then acts as FAKE_TRAINER_MODE says:
``ok`` (the default), ``error`` (the trainer's reported error: JSON line, exit 2) or ``crash``
(an unexpected exception: a traceback, exit 1).
"""

from __future__ import annotations

import json
import os
import sys


def main() -> int:
    argv = sys.argv[1:]
    record = os.environ.get("FAKE_TRAINER_RECORD")
    if record:
        env = {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "AIRFLOW_", "PYTHON", "FAKE_"))}
        with open(record, "w", encoding="utf-8") as handle:
            json.dump({"argv": argv, "env": env}, handle)
    mode = os.environ.get("FAKE_TRAINER_MODE", "ok")
    for step in (1, 2, 3):
        print(f"step {step}/3 loss={1.0 / step:.3f}", flush=True)
    if mode == "crash":
        raise RuntimeError("something unexpected")
    if mode == "error":
        result = {"status": "error", "error": "dataset has no label 'car' in its manifest"}
    else:
        output = argv[argv.index("--output") + 1]
        result = {"status": "ok", "output": output, "steps": 3, "metrics": {"AP50": 0.5}}
    if "--result-file" in argv:
        with open(argv[argv.index("--result-file") + 1], "w", encoding="utf-8") as handle:
            json.dump(result, handle)
    print(json.dumps(result), flush=True)
    return 2 if mode == "error" else 0


if __name__ == "__main__":
    sys.exit(main())
