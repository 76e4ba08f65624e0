"""What pretrained weights buy: fine-tune one generated task from another's weights vs from random.

Run by hand, not in CI::

    .venv/bin/python benchmarks/transfer.py [--model ssd-mobilenet-v2-coco] [--pretrain-steps 600]
        [--finetune-steps 200] [--finetune-images 24] [--size 128] [--batch 4]

1. Pretrain: 300 generated images of task A (circle, square, triangle), from random weights.
2. Its backbone and decoder become a base checkpoint (the form a published one takes).
3. Task B: other classes (six labels; three new shape/colour pairs), few images, a short budget.
   Fine-tune on B twice with the same arguments: from A's weights, and from random weights.
4. Print validation AP50 of both on B, and the wall times.

Everything goes through the trainer's command line, as a DAG run does.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._trainer_runs import base_from_run, random_base, train  # noqa: E402

TASK_A = ("circle", "square", "triangle")
TASK_B = ("b-circle", "b-square", "b-triangle", "b-yellow", "b-magenta", "b-cyan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="ssd-mobilenet-v2-coco")
    parser.add_argument("--pretrain-steps", type=int, default=600)
    parser.add_argument("--finetune-steps", type=int, default=200)
    parser.add_argument("--finetune-images", type=int, default=24)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=128)
    options = parser.parse_args()

    from demo_data.datasets import make_dataset

    scratch = Path(tempfile.mkdtemp(prefix="bench-transfer-"))
    # The shared test run's schedule (tests/fixtures/publish.py), which reaches AP50 ~0.98 on task A.
    common = f"batch_size={options.batch};input_size={options.size};initial_learning_rate=0.02"
    task_a = make_dataset(scratch / "task-a", 300, labels=TASK_A, size=options.size, seed=1)
    few = options.finetune_images
    task_b = make_dataset(scratch / "task-b", few, labels=TASK_B, size=options.size, seed=2)

    random = random_base(options.model, scratch / "random")
    pretrain_args = f"epochs={options.pretrain_steps};{common}"
    pretrained = train(task_a, scratch / "runs" / "a", options.model, pretrain_args, random)
    run_a = scratch / "runs" / "a"
    base = base_from_run(run_a, options.model, pretrain_args, len(TASK_A), scratch / "base-a")

    finetune_args = f"epochs={options.finetune_steps};{common}"
    from_a = train(task_b, scratch / "runs" / "b-from-a", options.model, finetune_args, base)
    from_random = train(task_b, scratch / "runs" / "b-from-random", options.model, finetune_args, random)
    print(json.dumps({
        "model": options.model,
        "task_a": {"steps": options.pretrain_steps, "AP50": pretrained["metrics"]["AP50"],
                   "wall_s": pretrained["wall_s"]},
        "task_b": {"images": options.finetune_images, "steps": options.finetune_steps},
        "AP50_from_pretrained": from_a["metrics"]["AP50"],
        "AP50_from_random": from_random["metrics"]["AP50"],
        "wall_s": {"from_pretrained": from_a["wall_s"], "from_random": from_random["wall_s"]},
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
