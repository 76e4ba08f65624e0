"""What evaluating during training costs: seconds per evaluation, from a real trainer run.

Run by hand, not in CI::

    .venv/bin/python benchmarks/evaluation.py [--images 24] [--size 128] [--steps 60]
        [--model ssd-mobilenet-v2-coco] [--eval-steps N] [--compare]

Generates ``--images`` images as a CVAT export (10% become the validation split), trains with
the trainer's command line (``eval_steps`` default: a fifth of the run) and prints each point
of ``metrics.json``'s ``history``: the first evaluation during training also traces the
validation step, the last one is the final evaluation (it restores the model from the
checkpoint and traces again); the ones between are what one more evaluation costs.
``--compare`` also trains with ``eval_steps=0`` and prints both wall times.

Measured on 2 shared CPU cores (load about 10), ssd-mobilenet-v2-coco, 24 images at 128 px
(2 validation images), 60 steps, batch 2: evaluations at steps 12, 24, 36, 48 took 24.7 s
(the first, with tracing), 1.6, 2.0 and 1.2 s; the final one 18.5 s.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._trainer_runs import ROOT, trainer  # noqa: E402


def run(dataset: Path, output: Path, model: str, arguments: str) -> dict:
    """One trainer run; its JSON result with ``wall_s`` and the run's metrics.json."""
    result = trainer(
        "train", "--dataset", dataset.as_uri(), "--output", output.as_uri(), "--model", model,
        "--arguments", arguments,
    )  # fmt: skip
    result["metrics_file"] = json.loads((output / "metrics.json").read_text())
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="ssd-mobilenet-v2-coco")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--eval-steps", type=int, default=None)
    parser.add_argument("--compare", action="store_true", help="also train with eval_steps=0")
    options = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    subprocess.run(
        [sys.executable, "-c", "import sys; from demo_data.datasets import make_dataset; "
         "make_dataset(sys.argv[1], int(sys.argv[2]), size=int(sys.argv[3]))",
         str(folder / "ds"), str(options.images), str(options.size)],
        cwd=ROOT, check=True,
    )  # fmt: skip
    base = f"epochs={options.steps};batch_size=2;input_size={options.size}"
    every = "" if options.eval_steps is None else f";eval_steps={options.eval_steps}"
    evaluated = run(folder / "ds", folder / "evaluated", options.model, base + every)
    history = evaluated["metrics_file"]["history"]
    for point in history:
        print(f"step {point['step']:>6}: AP50 {point['AP50']}  {point['seconds']:.2f} s")
    between = sorted(p["seconds"] for p in history[1:-1])
    if between:
        print(f"one more evaluation: median {between[len(between) // 2]:.2f} s over {len(between)}")
    print(f"wall time with {len(history)} evaluations: {evaluated['wall_s']} s")
    if options.compare:
        plain = run(folder / "ds", folder / "plain", options.model, base + ";eval_steps=0")
        print(f"wall time with the final evaluation only: {plain['wall_s']} s")


if __name__ == "__main__":
    main()
