"""Real photographs: train on the raccoon dataset's train split, evaluate on its test split.

Run by hand, not in CI (the photographs live in the team's shared folder, never in this
repository)::

    .venv/bin/python benchmarks/real_data.py [--data ../shared/datasets/raccoon]
        [--model ssd-mobilenet-v2-coco] [--steps 800] [--size 320] [--batch 8] [--base URI]

The two CVAT "COCO 1.0" task exports are repackaged as one CVAT project export with two subsets
(``annotations/instances_Train.json`` + ``images/Train/``, ``instances_Validation.json`` +
``images/Validation/``), so CVAT's subsets decide the split: the model is evaluated on the 40
test photographs it never saw. ``--base`` is the checkpoint to fine-tune from (a pulled
``{root}/base_models/NAME`` folder); without it the run starts from random weights (init-base).
Prints the trainer's AP, AP50 and AP75 on the test split, and the wall time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from airflow_cvat.manifest import Archive, Label, Manifest, fingerprint  # noqa: E402
from benchmarks._trainer_runs import random_base, train  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "raccoon"
SPLITS = {"Train": "raccoon_coco_train.zip", "Validation": "raccoon_coco_test.zip"}


def project_export(data: Path, target: Path) -> Manifest:
    """One COCO 1.0 zip with CVAT subsets, as a CVAT project export is laid out, and its manifest."""
    archive = target / "archives" / "raccoon-project.zip"
    archive.parent.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    images = 0
    labels: list[dict] = []
    with zipfile.ZipFile(archive, "w") as out:
        for subset, name in SPLITS.items():
            with zipfile.ZipFile(data / name) as source:
                coco = json.loads(source.read("annotations/instances_default.json"))
                for member in source.namelist():
                    if member.startswith("images/default/") and not member.endswith("/"):
                        renamed = member.replace("images/default/", f"images/{subset}/")
                        out.writestr(renamed, source.read(member))
            out.writestr(f"annotations/instances_{subset}.json", json.dumps(coco))
            labels = coco["categories"]
            images += len(coco["images"])
            for annotation in coco["annotations"]:
                label = next(c["name"] for c in labels if c["id"] == annotation["category_id"])
                counts[label] = counts.get(label, 0) + 1
    data_bytes = archive.read_bytes()
    manifest = Manifest(
        source={"benchmark": "raccoon", "splits": SPLITS},
        format="COCO 1.0",
        archives=[
            Archive(
                path="archives/raccoon-project.zip",
                format="COCO 1.0",
                size=len(data_bytes),
                sha256=hashlib.sha256(data_bytes).hexdigest(),
            )
        ],  # fmt: skip
        labels=[Label(id=c["id"], name=c["name"], type="rectangle") for c in labels],
        label_counts=counts,
        images=images,
        fingerprint=fingerprint(hashlib.sha256(data_bytes).hexdigest()),
    )
    (target / "manifest.json").write_text(manifest.to_json())
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--model", default="ssd-mobilenet-v2-coco")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--base", default=None, help="base checkpoint URI; default: random weights")
    options = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="bench-raccoon-"))
    manifest = project_export(options.data, scratch / "dataset")
    base = options.base or random_base(options.model, scratch / "random")
    arguments = (f"epochs={options.steps};batch_size={options.batch};input_size={options.size};"
                 f"initial_learning_rate={options.learning_rate}")  # fmt: skip
    result = train(scratch / "dataset", scratch / "run", options.model, arguments, base)
    metrics = result["metrics"]
    print(json.dumps({
        "model": options.model,
        "weights": "pretrained: " + options.base if options.base else "random (init-base)",
        "images": manifest.images,
        "arguments": arguments,
        "split": (result.get("prepared") or {}).get("split", {}).get("description"),
        "dropped": (result.get("prepared") or {}).get("line"),
        "test_AP": metrics.get("AP"), "test_AP50": metrics.get("AP50"), "test_AP75": metrics.get("AP75"),
        "num_replicas": result.get("num_replicas"),
        "wall_s": result["wall_s"],
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
