"""The model card: what a published model is, what it was trained on, and how good it is.

Written as JSON (for tools: the email, the DAG, a later publish comparing versions) and as
Markdown (for people browsing the bucket). Standard library only.
"""

from __future__ import annotations

import json
from typing import Any


def manifest_summary(manifest: dict[str, Any] | None) -> dict[str, Any] | None:
    """The parts of a dataset manifest a reader of the card needs (not every frame number)."""
    if not manifest:
        return None
    return {
        "source": manifest.get("source"),
        "format": manifest.get("format"),
        "images": manifest.get("images"),
        "labels": manifest.get("labels"),
        "label_counts": manifest.get("label_counts"),
        "fingerprint": manifest.get("fingerprint"),
        "selection": manifest.get("selection"),
        "archives": len(manifest.get("archives") or []),
        "jobs_left_out": len(manifest.get("jobs_left_out") or []),
        "created": manifest.get("created"),
    }


def card_json(
    *,
    model_name: str,
    version: str,
    created: str,
    run_uri: str,
    result: dict[str, Any],
    labels: list[dict[str, Any]],
    metrics: dict[str, Any],
    data: dict[str, Any] | None,
    base_model: dict[str, Any],
    tflite: dict[str, Any],
    files: list[str],
) -> dict[str, Any]:
    return {
        "name": model_name,
        "version": version,
        "created": created,
        "run": run_uri,
        "base_model": base_model,
        "arguments": result.get("arguments"),
        "steps": result.get("steps"),
        "num_replicas": result.get("num_replicas"),
        "labels": labels,
        "metrics": metrics,
        # the final model on the Test subset (None without one); the gate reads Validation only
        "test": held_out_summary(metrics),
        "data": data,
        # what training really used (the trainer's prepare.json summary): split and every drop
        "training_data": result.get("prepared"),
        "tflite": tflite,
        "files": files,
    }


def _number(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def metrics_rows(metrics: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(label, AP, AP50, AP75) rows: "all" first, then each class (n/a: no ground truth in validation)."""
    rows = [("all", *(_number(metrics.get(k)) for k in ("AP", "AP50", "AP75")))]
    for name, values in sorted((metrics.get("per_class") or {}).items()):
        rows.append((name, *(_number((values or {}).get(k)) for k in ("AP", "AP50", "AP75"))))
    return rows


def held_out_summary(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """The Test subset's headline numbers and the card's sentence for them, or None without one.

    Why a sentence of its own: Validation AP is what the run was judged on; Test AP, on images
    never trained on nor chosen with, is the estimate a reader should quote.
    """
    test = metrics.get("test")
    if not test:
        return None
    keys = ("AP50", "AP", "AP75", "mask_AP50", "mask_AP", "mask_AP75")
    shown = [key for key in keys if key in test]
    line = f"Test subset ({test.get('images')} images, never trained on): " + ", ".join(
        f"{key} {_number(test[key])}" for key in shown
    )
    return {
        "images": test.get("images"),
        "step": test.get("step"),
        **{k: test[k] for k in shown},
        "line": line,
    }


def training_data_lines(prepared: dict[str, Any] | None) -> list[str]:
    """Markdown for what training used: the split and what was dropped, by reason (never silent)."""
    if not prepared:
        return ["", "## Training data", "", "- the training run did not report its split and drops"]
    images = prepared.get("images") or {}

    def counts(values: dict[str, int] | None) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted((values or {}).items())) or "none"

    lines = [
        "",
        "## Training data",
        "",
        f"- split: {(prepared.get('split') or {}).get('description')}",
        f"- images: {images.get('train')} train, {images.get('validation')} validation, "
        f"{images.get('test')} test, of {images.get('selected')} selected",
        f"- dropped images: {counts(prepared.get('dropped_images'))}",
        f"- dropped shapes: {counts(prepared.get('dropped_shapes'))}; "
        f"clipped to the image: {prepared.get('clipped_shapes', 0)}",
    ]
    left_out = prepared.get("labels_left_out") or []
    lines.append(
        "- labels left out of the model: "
        + (", ".join(f"{e['name']} ({e['reason']})" for e in left_out) if left_out else "none")
    )
    return lines


def held_out_lines(card: dict[str, Any]) -> list[str]:
    """Markdown for the Test subset: its sentence and per-class table (nothing without a Test split)."""
    metrics = card.get("metrics") or {}
    summary = held_out_summary(metrics)
    if summary is None:
        return []
    return [
        "",
        "## Metrics (COCO, Test subset)",
        "",
        f"{summary['line']}. The quality gate reads the validation AP50 above.",
        "",
        "| label | AP | AP50 | AP75 |",
        "|---|---|---|---|",
        *(f"| {' | '.join(row)} |" for row in metrics_rows(metrics["test"])),
    ]


def card_markdown(card: dict[str, Any]) -> str:
    lines = [
        f"# {card['name']} {card['version']}",
        "",
        f"Published {card['created']} from the training run `{card['run']}`.",
        "",
        "## Base model and arguments",
        "",
        f"- base model: `{card['base_model'].get('name')}` ({card['base_model'].get('family')}, "
        f"backbone {card['base_model'].get('backbone')})",
        f"- arguments: `{json.dumps(card.get('arguments'), sort_keys=True)}`",
        f"- steps: {card.get('steps')}, replicas: {card.get('num_replicas')}",
        "",
        "## Metrics (COCO, validation split)",
        "",
        "| label | AP | AP50 | AP75 |",
        "|---|---|---|---|",
        *(f"| {' | '.join(row)} |" for row in metrics_rows(card["metrics"])),
        *held_out_lines(card),
        "",
        "## Labels",
        "",
        "| id | name | CVAT id |",
        "|---|---|---|",
        *(f"| {e['id']} | {e['name']} | {e.get('cvat_id', '')} |" for e in card["labels"]),
        "",
        "## Data",
        "",
    ]
    data = card.get("data")
    if data:
        lines += [
            f"- source: `{json.dumps(data.get('source'), sort_keys=True)}`",
            f"- format: {data.get('format')}, images: {data.get('images')}, archives: {data.get('archives')}",
            f"- objects per label: `{json.dumps(data.get('label_counts'), sort_keys=True)}`",
            f"- fingerprint: `{data.get('fingerprint')}`",
            f"- exported: {data.get('created')}",
        ]
    else:
        lines.append("- no dataset manifest was given to the publish step")
    lines += training_data_lines(card.get("training_data"))
    tflite = card.get("tflite") or {}
    lines += [
        "",
        "## Files and how to use them",
        "",
        "- `saved_model/`: TensorFlow SavedModel, signature `serving_default`: uint8 `images` "
        "[batch, height, width, 3] -> `detection_boxes` (normalised ymin, xmin, ymax, xmax), "
        "`detection_classes` (label ids above), `detection_scores`, `num_detections`",
        "- `nuclio/`: CVAT serverless function: `nuctl deploy --project-name cvat --path nuclio "
        "--file nuclio/function.yaml --platform local` (GPU: `function-gpu.yaml`)",
        "- `cvat_function.py`: `cvat-cli task auto-annotate TASK_ID --function-file cvat_function.py`",
        f"- TFLite: {tflite.get('status')}"
        + (f" (`{tflite['file']}`, ops: {tflite.get('ops')})" if tflite.get("file") else "")
        + (f": {tflite['reason']}" if tflite.get("reason") else ""),
        "",
    ]
    return "\n".join(lines)
