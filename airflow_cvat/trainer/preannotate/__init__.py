"""Pre-annotation: run a published model over CVAT frames nobody has annotated yet, upload shapes.

Runs where the model runs (a pod of the training image, or a local subprocess)::

    python -m airflow_cvat.trainer.preannotate --model-uri URI --cvat-url URL --task-id N \\
        [--job-states new] [--threshold 0.5] [--batch-size 16] [--result-file PATH]

``--model-uri`` is a published version folder ``{root}/models/{name}/{version}/`` (``saved_model/``
and ``label_map.json``), the model's folder ``{root}/models/{name}`` or its ``LATEST`` file (then
the version LATEST names). file:// and s3:// alike (:mod:`airflow_cvat.trainer.storage`).

Credentials come from the environment only, never argv (argv shows in ``ps``, pod specs and
logs): ``CVAT_ACCESS_TOKEN`` (a personal access token), or ``CVAT_USERNAME``/``CVAT_PASSWORD``;
``CVAT_ORGANIZATION`` (slug) and ``CVAT_VERIFY_SSL`` are optional (:mod:`airflow_cvat.cvat_policy`).

Upload is ``PATCH /api/tasks/{id}/annotations?action=create`` with ``source: "auto"``; re-running
does not duplicate (:mod:`.rerun`).

Output: progress lines on stderr (frames done, frames/s); the last stdout line is the JSON
summary ``{"status": "ok", "task_id", "jobs", "frames", "shapes", "per_label", "skipped_labels",
"seconds_inference", "seconds_upload", ...}``, also written to ``--result-file``. Exit 2 with
``{"status": "error", "error"}`` on bad input (unknown task, no model, no credentials), 1 on
other failures (:mod:`airflow_cvat.envelope`).

The modules, each owning one concept:

* :mod:`.model`: which published version, on local disk, and its detector;
* :mod:`.labels`: model classes to CVAT labels, by name;
* :mod:`.shapes`: detections to CVAT shapes (boxes, polygons, masks);
* :mod:`.rerun`: which frames get the model (people's work wins; no duplicates);
* :mod:`.frames`: frames downloaded ahead and batched by size;
* :mod:`.cvat_client`: the CVAT client under the shared policy;
* :mod:`.annotator` and :mod:`.summary`: the run and its JSON summary;
* :mod:`.command`: the command line.
"""

from airflow_cvat.trainer.preannotate.command import main, run
from airflow_cvat.trainer.preannotate.frames import batches_by_size
from airflow_cvat.trainer.preannotate.labels import map_labels
from airflow_cvat.trainer.preannotate.model import Detector, load_classes, resolve_version
from airflow_cvat.trainer.preannotate.rerun import plan_frames
from airflow_cvat.trainer.preannotate.shapes import frame_shapes, mask_to_rle

__all__ = [
    "Detector",
    "batches_by_size",
    "frame_shapes",
    "load_classes",
    "main",
    "map_labels",
    "mask_to_rle",
    "plan_frames",
    "resolve_version",
    "run",
]
