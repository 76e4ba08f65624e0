"""CVAT nuclio function serving a detector trained by airflow-provider-cvat.

Deployed with CVAT's serverless tooling (``nuctl deploy --path . --file function.yaml``, or
``function-gpu.yaml`` on a GPU node). CVAT posts ``{"image": <base64>, "threshold": 0.5}`` and
expects a JSON list of ``{"confidence", "label", "points", "type"}``, as its own detectors return.

The SavedModel lives in ``saved_model/`` next to this file (or at ``$MODEL_PATH``); the label
names and ids are in ``labels.json``. Written by airflow-provider-cvat; not edited by hand.
"""

import base64
import io
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
DEFAULT_THRESHOLD = 0.5


class ModelHandler:
    """Loads the SavedModel once per worker and turns its outputs into CVAT shapes."""

    def __init__(self, model_path=None, labels_path=None):
        import tensorflow as tf

        self.tf = tf
        model_path = model_path or os.environ.get("MODEL_PATH") or str(HERE / "saved_model")
        labels_path = labels_path or os.environ.get("LABELS_PATH") or str(HERE / "labels.json")
        self.model = tf.saved_model.load(model_path)
        self.serve = self.model.signatures["serving_default"]
        spec = json.loads(Path(labels_path).read_text())
        self.labels = {int(entry["id"]): entry["name"] for entry in spec}
        self.types = {int(entry["id"]): entry.get("type", "rectangle") for entry in spec}

    def infer(self, image, threshold):
        array = np.asarray(image.convert("RGB"), dtype=np.uint8)
        height, width = array.shape[:2]
        outputs = self.serve(images=self.tf.constant(array[None]))
        outputs = {key: value.numpy()[0] for key, value in outputs.items()}
        results = []
        for index in range(int(outputs["num_detections"])):
            score = float(outputs["detection_scores"][index])
            class_id = int(outputs["detection_classes"][index])
            if score < threshold or class_id not in self.labels:
                continue
            ymin, xmin, ymax, xmax = (float(v) for v in outputs["detection_boxes"][index])
            box = [xmin * width, ymin * height, xmax * width, ymax * height]
            shape = {
                "confidence": str(score),
                "label": self.labels[class_id],
                "points": box,
                "type": "rectangle",
            }
            if self.types[class_id] == "mask" and "detection_masks" in outputs:
                shape = dict(shape, type="mask", points=to_cvat_mask(box, outputs["detection_masks"][index]))
            results.append(shape)
        return results


def to_cvat_mask(box, mask):
    """A box-relative mask as CVAT's mask points: run lengths over the box (from 0s), then the box."""
    xtl, ytl, xbr, ybr = (int(round(v)) for v in box)
    width, height = max(1, xbr - xtl + 1), max(1, ybr - ytl + 1)
    resized = Image.fromarray((np.asarray(mask) * 255).astype(np.uint8)).resize((width, height))
    flat = (np.asarray(resized) >= 128).astype(np.uint8).reshape(-1)
    runs, current, count = [], 0, 0
    for value in flat:
        if value == current:
            count += 1
        else:
            runs.append(count)
            current, count = value, 1
    runs.append(count)
    return runs + [xtl, ytl, xbr, ybr]


def init_context(context):
    context.logger.info("Init context...  0%")
    context.user_data.model_handler = ModelHandler()
    context.logger.info("Init context...100%")


def handler(context, event):
    context.logger.info("Run detector")
    data = event.body if isinstance(event.body, dict) else json.loads(event.body)
    image = Image.open(io.BytesIO(base64.b64decode(data["image"])))
    threshold = float(data.get("threshold", DEFAULT_THRESHOLD))
    results = context.user_data.model_handler.infer(image, threshold)
    return context.Response(
        body=json.dumps(results), headers={}, content_type="application/json", status_code=200
    )
