"""prepare throughput (images/s) and peak memory for 200 and 2,000 generated images.

Run by hand, not in CI::

    .venv/bin/python benchmarks/prepare.py [--counts 200,2000] [--size 640] [--masks]

For each count: a generated CVAT export (COCO 1.0, up to 3 shapes per image, ``--size`` px
square JPEGs) is written first, untimed; then a fresh subprocess imports the trainer, records
its resident memory, runs :func:`airflow_cvat.trainer.prepare.prepare` on the export (the
10% validation split, boxes; instance masks too with ``--masks``) and reports images/s and its
peak resident memory. One subprocess per count, so each peak belongs to that count alone.

Measured on 2 CPU cores (other jobs running), 640 px JPEGs, about 2 objects per image:

=======  ==============  =================  ==================================
images   boxes: img/s    with masks: img/s  peak RSS (of which imports)
=======  ==============  =================  ==================================
200      498             197                715 MB (713 MB TensorFlow et al.)
2,000    586             202                728 MB (713-717 MB)
=======  ==============  =================  ==================================

Memory does not grow with the dataset (images stream from the zip to the shards). Before a fix
found with this benchmark, prepare re-opened the zip for every image, which made 2,000 images
3.5x slower per image than 200 (168 images/s).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CHILD = """
import json, resource, sys, time
from pathlib import Path
import tensorflow  # imported up front: its memory is the baseline, not prepare's
from airflow_cvat.trainer.prepare import prepare

def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

dataset, out, masks = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "1"
baseline = rss_mb()
started = time.perf_counter()
report = prepare(dataset, out, validation_fraction=0.1, with_masks=masks)
seconds = time.perf_counter() - started
images = report.train_images + report.validation_images
print(json.dumps({
    "images": images,
    "objects": report.objects,
    "seconds": round(seconds, 2),
    "images_per_s": round(images / seconds, 1),
    "peak_rss_mb": round(rss_mb()),
    "rss_after_imports_mb": round(baseline),
}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--counts", default="200,2000")
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--masks", action="store_true", help="also write instance masks (Mask R-CNN)")
    options = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from demo_data.datasets import make_dataset

    root = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    for count in (int(c) for c in options.counts.split(",")):
        folder = root / f"ds-{count}"
        started = time.perf_counter()
        make_dataset(folder, count, size=options.size)
        generated = time.perf_counter() - started
        zipped = sum(p.stat().st_size for p in (folder / "archives").glob("*.zip"))
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                _CHILD,
                str(folder),
                str(root / f"data-{count}"),
                "1" if options.masks else "0",
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
        if proc.returncode:
            sys.exit(proc.stderr[-3000:])
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        written = sum(p.stat().st_size for p in (root / f"data-{count}").glob("*.tfrecord"))
        result.update(
            size=options.size,
            masks=options.masks,
            export_mb=round(zipped / 2**20, 1),
            tfrecords_mb=round(written / 2**20, 1),
            generate_s=round(generated, 1),
        )
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
