"""cvat-sdk auto-annotation function for a detector trained by airflow-provider-cvat.

Use it from the command line::

    cvat-cli --server-host https://app.cvat.ai --auth user task auto-annotate TASK_ID \
        --function-file cvat_function.py --conf-threshold 0.5 --allow-unmatched-labels

or from Python with ``cvat_sdk.auto_annotation.annotate_task(client, task_id, module)``.
The SavedModel is ``saved_model/`` next to this file (or ``$CVAT_MODEL_PATH``); labels come from
``label_map.json`` next to it. TensorFlow is imported on the first ``detect`` call only, so
reading ``spec`` is cheap. Written by airflow-provider-cvat; not edited by hand.
"""

import json
import os
from pathlib import Path

import cvat_sdk.auto_annotation as cvataa
import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_THRESHOLD = 0.5

_LABELS = json.loads((HERE / "label_map.json").read_text())["labels"]

spec = cvataa.DetectionFunctionSpec(
    labels=[cvataa.label_spec(entry["name"], int(entry["id"]), type="rectangle") for entry in _LABELS]
)

_model = {}


def _serve():
    if "serve" not in _model:
        import tensorflow as tf

        loaded = tf.saved_model.load(os.environ.get("CVAT_MODEL_PATH") or str(HERE / "saved_model"))
        _model.update(tf=tf, loaded=loaded, serve=loaded.signatures["serving_default"])
    return _model["tf"], _model["serve"]


def detect(context, image):
    """Rectangles for one PIL image, at or above the caller's confidence threshold."""
    tf, serve = _serve()
    threshold = getattr(context, "conf_threshold", None)
    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    height, width = array.shape[:2]
    outputs = {key: value.numpy()[0] for key, value in serve(images=tf.constant(array[None])).items()}
    known = {int(entry["id"]) for entry in _LABELS}
    shapes = []
    for index in range(int(outputs["num_detections"])):
        score = float(outputs["detection_scores"][index])
        class_id = int(outputs["detection_classes"][index])
        if score < threshold or class_id not in known:
            continue
        ymin, xmin, ymax, xmax = (float(v) for v in outputs["detection_boxes"][index])
        points = [xmin * width, ymin * height, xmax * width, ymax * height]
        shapes.append(cvataa.rectangle(class_id, points))
    return shapes
