"""Generated datasets in the exact layout the export operator writes (tests, benchmarks, demo).

Why here and not in tests/: the benchmarks and the offline demo need the same folders, and the
layout must follow :mod:`airflow_cvat.manifest` exactly. Uses :mod:`demo_data.synthetic`.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from airflow_cvat.manifest import MANIFEST_NAME, Archive, Label, Manifest, fingerprint
from demo_data.synthetic import DEFAULT_LABELS, generate_frames, write_export


def make_dataset(
    folder: str | Path,
    count: int,
    *,
    format: str = "COCO 1.0",
    labels: Sequence[str] = DEFAULT_LABELS,
    size: int = 128,
    seed: int = 0,
    archives: int = 1,
    frame_names: bool = True,
    max_objects: int = 3,
) -> Path:
    """Write ``{folder}/archives/*.zip`` + ``manifest.json`` with ``count`` generated frames."""
    folder = Path(folder)
    (folder / "archives").mkdir(parents=True, exist_ok=True)
    entries, counts, per = [], Counter(), -(-count // archives)
    for index in range(archives):
        start = index * per
        n = min(per, count - start)
        frames = list(
            generate_frames(
                n, width=size, height=size, labels=labels, seed=seed, start=start, max_objects=max_objects
            )
        )
        counts.update(shape.label for frame in frames for shape in frame.shapes)
        relative = f"archives/task-1-job-{index + 1}.zip"
        with open(folder / relative, "wb") as handle:
            write_export(frames, labels, handle, format=format)
        data = (folder / relative).read_bytes()
        entries.append(
            Archive(
                path=relative,
                format=format,
                size=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                task_id=1,
                job_id=index + 1,
                frames=[f.frame for f in frames if f.frame is not None],
                frame_names=[f.name for f in frames] if frame_names else [],
            )
        )
    manifest = Manifest(
        source={"server": "synthetic", "task_id": 1},
        format=format,
        archives=entries,
        labels=[Label(id=10 + i, name=name) for i, name in enumerate(labels)],
        label_counts=dict(counts),
        images=count,
        fingerprint=fingerprint({"seed": seed, "count": count, "size": size, "labels": list(labels)}),
    )
    (folder / MANIFEST_NAME).write_text(manifest.to_json())
    return folder
