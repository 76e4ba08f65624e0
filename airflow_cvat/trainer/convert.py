"""convert: the TensorFlow half of publishing a trained run (never imports Airflow).

The Airflow side (``airflow_cvat.operators.convert``) stages a finished run into a local folder
and calls this module as a subprocess, because the scheduler's and workers' processes must
never import TensorFlow. Everything here reads and writes local paths only: no credentials
reach this process.

Commands (each ends with the result envelope of :mod:`airflow_cvat.envelope`: one JSON object on
its last stdout line, ``{"status": "ok", ...}`` with exit 0, or ``{"status": "error", "error":
...}`` with exit 2 for a bad command line and 1 for anything else; ``--result-file`` receives the
same object, written atomically)::

    python -m airflow_cvat.trainer.convert check   --saved-model DIR [--label-map FILE]     -> "check"
    python -m airflow_cvat.trainer.convert tflite  --saved-model DIR --output FILE          -> "tflite"
    python -m airflow_cvat.trainer.convert preview --saved-model DIR --data DIR --label-map FILE
                                                   --output DIR [--count 4] [--threshold 0.3] -> "previews"
    python -m airflow_cvat.trainer.convert history --tensorboard DIR --output FILE          -> "history"
    python -m airflow_cvat.trainer.convert all     --run DIR|URI --output DIR|URI [--no-tflite] [--count 4]
                                                   [--result-file FILE]

``all`` is what the operator runs (one TensorFlow start-up instead of four): ``check`` first
(a model that does not load or predict stops everything: ``{"status": "ok", "broken": reason}``,
an answer, not a failed command), then TFLite, previews and the loss/AP history, each of which
records its own failure instead of failing the whole command: a model that cannot become TFLite
is still a good model.

Where it runs: on the backend the DAG run chose. Locally the operator stages the run into a
folder and passes paths (no credentials reach this process). In a pod of the training image
``--run`` is the run's URI (``s3://...``) and ``--output`` a URI too: :func:`stage_run` pulls
only what ``all`` reads, :func:`push_output` uploads the results, with the credentials the pod
gets from its Secret (``AWS_*``, read by :mod:`airflow_cvat.trainer.storage`), and
``--result-file`` receives the JSON result (the pod's XCom, ``/airflow/xcom/return.json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from airflow_cvat.envelope import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, OK, crash, emit, failure

log = logging.getLogger(__name__)

CHECK_SHAPES = ((97, 131, 3), (64, 48, 3))
"""Odd, non-square sizes: CVAT frames come in any size and the signature must take them."""
PREVIEW_COLORS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6")
"""Predictions: a solid box and a filled label tag in their class's colour."""
TRUTH_COLOR = "#ffffff"
"""Ground truth: a dashed white box (with a dark edge), so it never reads as a prediction."""
PREVIEW_MIN_WIDTH = 480
"""Small images are enlarged to at least this width so that boxes and labels stay readable."""
FONT_FILES = ("DejaVuSans-Bold.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf", "DejaVuSans.ttf")


def read_labels(label_map: str | os.PathLike[str] | None) -> list[dict]:
    """Labels of ``label_map.json`` (the trainer's ``{"labels": [{"id", "name", ...}]}``)."""
    if not label_map or not Path(label_map).exists():
        return []
    data = json.loads(Path(label_map).read_text())
    return list(data.get("labels", data) if isinstance(data, dict) else data)


def load_signature(saved_model: str | os.PathLike[str]):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(saved_model))
    if "serving_default" not in loaded.signatures:
        raise RuntimeError(f"{saved_model} has no serving_default signature")
    return loaded, loaded.signatures["serving_default"]


def predict(serve, image) -> dict[str, Any]:
    """Run the signature on one HxWx3 uint8 array; numpy outputs with the batch axis removed."""
    import numpy as np
    import tensorflow as tf

    batch = tf.constant(np.asarray(image, dtype=np.uint8)[None])
    return {key: value.numpy()[0] for key, value in serve(images=batch).items()}


def check(saved_model: str | os.PathLike[str], labels: list[dict]) -> dict[str, Any]:
    """Load the SavedModel and predict on odd-sized images; raise with the reason if anything is off.

    This is the gate's definition of "not broken": it loads, it takes uint8 images of any size,
    it returns normalised boxes, and its class ids are the label map's.
    """
    import numpy as np

    began = time.monotonic()
    _, serve = load_signature(saved_model)
    inputs = serve.structured_input_signature[1]
    if "images" not in inputs or inputs["images"].dtype.name != "uint8":
        raise RuntimeError(f"serving_default must take uint8 'images', it takes {inputs}")
    rng = np.random.default_rng(0)
    outputs: dict[str, Any] = {}
    for shape in CHECK_SHAPES:
        outputs = predict(serve, rng.integers(0, 255, size=shape, dtype=np.uint8))
        _check_outputs(outputs, len(labels))
    return {
        "outputs": sorted(outputs),
        "masks": "detection_masks" in outputs,
        "max_detections": int(outputs["detection_boxes"].shape[0]),
        "seconds": round(time.monotonic() - began, 2),
    }


def _check_outputs(outputs: dict[str, Any], num_labels: int) -> None:
    missing = {"detection_boxes", "detection_classes", "detection_scores", "num_detections"} - set(outputs)
    if missing:
        raise RuntimeError(f"serving_default lacks the outputs {sorted(missing)}")
    boxes, classes = outputs["detection_boxes"], outputs["detection_classes"]
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise RuntimeError(f"detection_boxes has shape {boxes.shape}, expected [K, 4]")
    if boxes.size and (boxes.min() < 0 or boxes.max() > 1):
        raise RuntimeError("detection_boxes are not normalised to 0..1")
    count = int(outputs["num_detections"])
    if count and num_labels and (classes[:count].min() < 1 or classes[:count].max() > num_labels):
        raise RuntimeError(f"detection_classes outside the label map's ids 1..{num_labels}")


def to_tflite(saved_model: str | os.PathLike[str], output: str | os.PathLike[str]) -> dict[str, Any]:
    """Convert to TFLite; never raises: ``{"status": "converted"|"not convertible", ...}``.

    Builtin ops first (runs on every TFLite runtime); then with TensorFlow ops (needs the Flex
    delegate, which full TensorFlow and the tflite-runtime-with-flex builds have). The result is
    invoked once on an odd-sized image, because a converter that succeeds can still emit a model
    that fails at run time.
    """
    import tensorflow as tf

    attempts = [("builtins", [tf.lite.OpsSet.TFLITE_BUILTINS])]
    attempts.append(
        ("builtins+select_tf_ops", [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS])
    )
    reasons = []
    for name, ops in attempts:
        try:
            converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
            converter.target_spec.supported_ops = ops
            data = converter.convert()
            Path(output).write_bytes(data)
            _invoke_tflite(str(output))
            return {"status": "converted", "ops": name, "bytes": len(data), "file": Path(output).name}
        except Exception as error:  # noqa: BLE001 - any converter failure means "try the next"
            reasons.append(f"{name}: {_first_line(error)}")
            Path(output).unlink(missing_ok=True)
    return {"status": "not convertible", "reason": "; ".join(reasons)}


def _invoke_tflite(path: str) -> None:
    import numpy as np
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=path)
    detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail["index"], [1, *CHECK_SHAPES[0]])
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], np.zeros((1, *CHECK_SHAPES[0]), dtype=detail["dtype"]))
    interpreter.invoke()


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    # The converter's messages are long MLIR dumps; the useful part is the first error line.
    useful = [line for line in text if "error" in line.lower()] or text or [type(error).__name__]
    return useful[0][:300]


def validation_images(data_dir: str | os.PathLike[str], count: int) -> list[dict[str, Any]]:
    """The first ``count`` images of the validation TFRecords, with their ground-truth boxes."""
    import tensorflow as tf

    files = sorted(str(p) for p in Path(data_dir).glob("val-*.tfrecord"))
    if not files:
        return []
    features = {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/filename": tf.io.FixedLenFeature([], tf.string, default_value=""),
        "image/object/bbox/xmin": tf.io.VarLenFeature(tf.float32),
        "image/object/bbox/ymin": tf.io.VarLenFeature(tf.float32),
        "image/object/bbox/xmax": tf.io.VarLenFeature(tf.float32),
        "image/object/bbox/ymax": tf.io.VarLenFeature(tf.float32),
    }
    images = []
    for record in tf.data.TFRecordDataset(files).take(count):
        parsed = tf.io.parse_single_example(record, features)
        dense = {
            k: tf.sparse.to_dense(v).numpy() if isinstance(v, tf.SparseTensor) else v.numpy()
            for k, v in parsed.items()
        }
        boxes = list(
            zip(
                dense["image/object/bbox/xmin"],
                dense["image/object/bbox/ymin"],
                dense["image/object/bbox/xmax"],
                dense["image/object/bbox/ymax"],
                strict=True,
            )
        )
        images.append(
            {
                "encoded": dense["image/encoded"],
                "name": dense["image/filename"].decode() or f"validation-{len(images)}",
                "truth": [tuple(float(v) for v in box) for box in boxes],
            }
        )
    return images


def detections(outputs: dict[str, Any], width: int, height: int, threshold: float) -> list[dict[str, Any]]:
    """Model outputs -> ``[{"box": [xtl, ytl, xbr, ybr] in pixels, "class", "score"}]`` above threshold."""
    found = []
    for index in range(int(outputs["num_detections"])):
        score = float(outputs["detection_scores"][index])
        if score < threshold:
            continue
        ymin, xmin, ymax, xmax = (float(v) for v in outputs["detection_boxes"][index])
        box = [xmin * width, ymin * height, xmax * width, ymax * height]
        found.append({"box": box, "class": int(outputs["detection_classes"][index]), "score": score})
    return found


def preview(
    saved_model: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    labels: list[dict],
    output: str | os.PathLike[str],
    count: int = 4,
    threshold: float = 0.3,
) -> dict[str, Any]:
    """Draw predicted boxes (solid, class colour, a label tag with the score) and ground truth
    (dashed white) on the first ``count`` validation images; PNGs into ``output``. Shown in the
    success email so a person sees what the model does, not only its AP."""
    import io

    import numpy as np
    from PIL import Image, ImageDraw

    names = {int(entry["id"]): entry["name"] for entry in labels}
    _, serve = load_signature(saved_model)
    Path(output).mkdir(parents=True, exist_ok=True)
    written = []
    for index, item in enumerate(validation_images(data_dir, count)):
        image = Image.open(io.BytesIO(item["encoded"])).convert("RGB")
        found = detections(predict(serve, np.asarray(image)), image.width, image.height, threshold)
        factor = -(-PREVIEW_MIN_WIDTH // image.width)  # whole factors keep pixels square and sharp
        canvas = image.resize((image.width * factor, image.height * factor)) if factor > 1 else image.copy()
        draw = ImageDraw.Draw(canvas)
        line = max(2, canvas.width // 240)
        # Layers: prediction boxes, then ground truth (its dashes stay visible where a good
        # prediction covers it), then the label tags, which no line may cross.
        predicted = [
            (PREVIEW_COLORS[d["class"] % len(PREVIEW_COLORS)], [v * factor for v in d["box"]], d)
            for d in found
        ]
        for color, box, _ in predicted:
            draw.rectangle(box, outline=color, width=line)
        for x0, y0, x1, y1 in item["truth"]:
            _dashed_rectangle(
                draw, [x0 * canvas.width, y0 * canvas.height, x1 * canvas.width, y1 * canvas.height], line
            )
        font = preview_font(canvas)
        for color, box, det in predicted:
            _label_tag(draw, box, f"{names.get(det['class'], det['class'])} {det['score']:.2f}", color, font)
        name = f"preview-{index}.png"
        canvas.save(Path(output) / name)
        written.append({"file": name, "image": item["name"], "detections": len(found)})
    return {"images": written, "threshold": threshold}


def preview_font(canvas):
    """A TrueType font 1/28 of the image's width, at least 14 px (DejaVu where installed; else
    Pillow's own scalable default, Pillow >= 10.1). The email shows previews 420 px wide, so
    labels read there at about 15 px whatever the image's size."""
    from PIL import ImageFont

    size = max(14, canvas.width // 28)
    for name in FONT_FILES:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def _dashed_rectangle(draw, box: list[float], width: int) -> None:
    """A dashed white rectangle with a dark edge under it: visible on light and dark images."""
    x0, y0, x1, y1 = box
    dash = 4 * width
    sides = [((x0, y0), (x1, y0)), ((x1, y0), (x1, y1)), ((x1, y1), (x0, y1)), ((x0, y1), (x0, y0))]
    for color, extra in (("#000000", 2), (TRUTH_COLOR, 0)):
        for (ax, ay), (bx, by) in sides:
            length = max(abs(bx - ax), abs(by - ay))
            for start in range(0, int(length), 2 * dash):
                end = min(start + dash, length)
                a, b = start / max(length, 1), end / max(length, 1)
                segment = [(ax + (bx - ax) * a, ay + (by - ay) * a), (ax + (bx - ax) * b, ay + (by - ay) * b)]
                draw.line(segment, fill=color, width=width + extra)


def _label_tag(draw, box: list[float], text: str, color: str, font) -> None:
    """The class name and score on a filled tag above the box (inside it at the image's top)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = 3
    height = bottom - top + 2 * pad
    y = box[1] - height if box[1] - height >= 0 else box[1]
    draw.rectangle([box[0], y, box[0] + right - left + 2 * pad, y + height], fill=color)
    draw.text((box[0] + pad - left, y + pad - top), text, fill=_ink(color), font=font)


def _ink(color: str) -> str:
    """Black or white text, whichever reads better on ``color`` (#rrggbb)."""
    red, green, blue = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return "#000000" if 0.299 * red + 0.587 * green + 0.114 * blue > 150 else "#ffffff"


def history(tensorboard: str | os.PathLike[str]) -> dict[str, dict[str, list[list[float]]]]:
    """Scalars of the run's TensorBoard events: ``{"train": {"total_loss": [[step, value], ...]},
    "eval": {"coco/AP50": [...]}}``. The trainer writes no separate loss log; its events are the
    record of the loss curve."""
    import tensorflow as tf

    curves: dict[str, dict[str, list[list[float]]]] = {}
    for events in sorted(Path(tensorboard).rglob("events.out.tfevents.*")):
        split = events.parent.relative_to(tensorboard).as_posix() or "."
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            for value in event.summary.value:
                number = _scalar(value)
                if number is not None:
                    curves.setdefault(split, {}).setdefault(value.tag, []).append([int(event.step), number])
    for split in curves.values():
        for tag, points in split.items():
            split[tag] = sorted({step: v for step, v in points}.items())  # last write per step wins
            split[tag] = [[s, v] for s, v in split[tag]]
    return curves


def _scalar(value) -> float | None:
    import tensorflow as tf

    if value.HasField("simple_value"):
        return float(value.simple_value)
    if value.HasField("tensor"):
        array = tf.make_ndarray(value.tensor)
        if array.size == 1 and array.dtype.kind in "fiu":
            return float(array.reshape(-1)[0])
    return None


def run_all(run: Path, output: Path, *, tflite: bool = True, count: int = 4, threshold: float = 0.3) -> dict:
    """What the operator calls: check, then TFLite, previews, history; see the module docstring.

    A model that fails the check is an answer: ``{"broken": reason}`` and nothing else.
    """
    output.mkdir(parents=True, exist_ok=True)
    saved_model = run / "saved_model"
    labels = read_labels(run / "label_map.json") or read_labels(run / "data" / "label_map.json")
    try:
        result: dict[str, Any] = {"check": check(saved_model, labels)}
    except Exception as error:  # noqa: BLE001 - a broken model is an answer, not a crash
        log.warning("model check failed:\n%s", traceback.format_exc())
        return {"broken": f"{type(error).__name__}: {_first_line(error)}"}
    result["tflite"] = (
        to_tflite(saved_model, output / "model.tflite")
        if tflite
        else {"status": "skipped", "reason": "tflite=False"}
    )
    result["previews"] = _guarded(
        preview, saved_model, run / "data", labels, output / "previews", count, threshold
    )
    result["history"] = _guarded(history, run / "tensorboard")
    (output / "history.json").write_text(json.dumps(result["history"]))
    result["history"] = {"file": "history.json"} if "error" not in result["history"] else result["history"]
    return result


STAGED_FILES = ("label_map.json", "data/label_map.json")
"""What ``all`` reads from a run besides its folders (saved_model, tensorboard, val TFRecords)."""


def is_uri(location: str) -> bool:
    """True for ``s3://`` and ``file://`` locations, False for a plain local path."""
    return "://" in location


def stage_run(run_uri: str, local: Path) -> Path:
    """Copy what ``all`` reads from the run at ``run_uri`` into ``local``; return the local run.

    Only the SavedModel, the TensorBoard events, the label maps and the validation TFRecords: the
    training TFRecords and checkpoints can be gigabytes and ``all`` never reads them. A file://
    run is read in place.
    """
    from airflow_cvat.trainer import storage

    if storage.is_local(run_uri):
        return Path(storage.split_uri(run_uri)[1])
    fs, root = storage.split_uri(run_uri)
    for folder in ("saved_model", "tensorboard"):
        if fs.exists(f"{root}/{folder}"):
            fs.get(f"{root}/{folder}/", str(local / folder) + "/", recursive=True)
    for name in STAGED_FILES:
        if fs.exists(f"{root}/{name}"):
            storage.get_file(storage.join(run_uri, name), local / name)
    for remote in fs.glob(f"{root}/data/val-*.tfrecord"):
        name = remote.rsplit("/", 1)[-1]
        storage.get_file(storage.join(run_uri, "data", name), local / "data" / name)
    return local


def push_output(local: Path, output_uri: str) -> None:
    """Upload everything ``all`` wrote under ``local`` to ``output_uri`` (a no-op for file://)."""
    from airflow_cvat.trainer import storage

    if storage.is_local(output_uri):
        return
    fs, root = storage.split_uri(output_uri)
    fs.put(str(local) + "/", root.rstrip("/") + "/", recursive=True)


def run_all_at(run: str, output: str, **options: Any) -> dict:
    """:func:`run_all` for paths or URIs: stage the run, convert, upload the results."""
    from airflow_cvat.trainer import storage

    with tempfile.TemporaryDirectory(prefix="airflow-cvat-convert-") as scratch:
        staged = stage_run(run, Path(scratch, "run")) if is_uri(run) else Path(run)
        local_output = Path(output)
        if is_uri(output):
            remote = not storage.is_local(output)
            local_output = Path(scratch, "output") if remote else Path(storage.split_uri(output)[1])
        result = run_all(staged, local_output, **options)
        if is_uri(output):
            push_output(local_output, output)
        return result


def _guarded(function, *args) -> dict[str, Any]:
    try:
        return function(*args)
    except Exception as error:  # noqa: BLE001 - a missing preview must not stop publishing
        log.warning("%s failed:\n%s", function.__name__, traceback.format_exc())
        return {"error": f"{type(error).__name__}: {_first_line(error)}"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_cvat.trainer.convert",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("check", help="load the SavedModel and predict once")
    one.add_argument("--saved-model", required=True)
    one.add_argument("--label-map")
    lite = commands.add_parser("tflite", help="convert to TFLite (records why not)")
    lite.add_argument("--saved-model", required=True)
    lite.add_argument("--output", required=True)
    view = commands.add_parser("preview", help="draw predictions on validation images")
    view.add_argument("--saved-model", required=True)
    view.add_argument("--data", required=True)
    view.add_argument("--label-map", required=True)
    view.add_argument("--output", required=True)
    view.add_argument("--count", type=int, default=4)
    view.add_argument("--threshold", type=float, default=0.3)
    events = commands.add_parser("history", help="loss and AP curves from TensorBoard events")
    events.add_argument("--tensorboard", required=True)
    events.add_argument("--output", required=True)
    every = commands.add_parser("all", help="check, TFLite, previews and history for a staged run")
    every.add_argument(
        "--run", required=True, help="the run: a local folder with saved_model/, ... or its URI"
    )
    every.add_argument("--output", required=True, help="a local folder or a URI (s3://, file://)")
    every.add_argument("--result-file", default=None, help="also write the JSON result here (a pod's XCom)")
    every.add_argument("--no-tflite", action="store_true")
    every.add_argument("--count", type=int, default=4)
    every.add_argument("--threshold", type=float, default=0.3)
    return parser


def run_command(args: argparse.Namespace) -> dict[str, Any]:
    """The result of one command, under the key its part has in ``all``'s result."""
    if args.command == "check":
        return {"check": check(args.saved_model, read_labels(args.label_map))}
    if args.command == "tflite":
        return {"tflite": to_tflite(args.saved_model, args.output)}
    if args.command == "preview":
        labels = read_labels(args.label_map)
        return {
            "previews": preview(args.saved_model, args.data, labels, args.output, args.count, args.threshold)
        }
    if args.command == "history":
        curves = history(args.tensorboard)
        Path(args.output).write_text(json.dumps(curves))
        return {"history": {"file": args.output, "series": {k: sorted(v) for k, v in curves.items()}}}
    options = {"tflite": not args.no_tflite, "count": args.count, "threshold": args.threshold}
    return run_all_at(args.run, args.output, **options)


def main(argv: list[str] | None = None) -> int:
    """Run one command; always end with the envelope's JSON line (exit 0, 1, or 2 for bad input)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as error:  # argparse: usage errors are bad input
        if error.code in (0, None):
            raise
        return emit(failure("invalid command line (see usage above)"), EXIT_BAD_INPUT)
    result_file = getattr(args, "result_file", None)
    try:
        result = run_command(args)
    except Exception as error:  # noqa: BLE001 - the caller reads the reason from the JSON line
        log.error("%s", traceback.format_exc())
        return emit(crash(error), EXIT_FAILED, result_file)
    return emit({"status": OK, **result}, EXIT_OK, result_file)


if __name__ == "__main__":
    sys.exit(main())
