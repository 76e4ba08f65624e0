"""The trainer's command line: ``python -m airflow_cvat.trainer SUBCOMMAND ...``.

Subcommands (all URIs are file:// or s3://; a bare path means a local folder)::

    train     --dataset URI --output URI --model NAME [--base-checkpoint URI] [--arguments TEXT]
              [--catalog FILE] [--validation-fraction 0.1]
              prepare -> train -> evaluate -> export; each stage skips when its output is
              already complete in --output, so a retried pod resumes instead of starting over.
    prepare   --dataset URI --output URI [--model NAME] [--validation-fraction 0.1]
              [--arguments "max_dropped_images=0.05;keep_empty_labels=false"] (with --model)
    evaluate  --output URI [--model NAME --arguments TEXT --catalog FILE]   (defaults: run.json)
    export    --output URI [--model NAME --arguments TEXT --catalog FILE]
    validate  --model NAME [--arguments TEXT] [--catalog FILE] [--num-images N]   (no TensorFlow)
    init-base --model NAME --output URI [--catalog FILE]
              a randomly initialised base checkpoint (backbone + decoder), the form real ones take

The last stdout line is one JSON object: ``{"status": "ok", ...}`` (exit 0), or
``{"status": "error", "error": "..."}`` with exit 2 for bad input (arguments, dataset, model
name, devices) and exit 1 for anything else. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import traceback
from typing import Any

from airflow_cvat.arguments import ArgumentError, TrainingArguments, parse_arguments
from airflow_cvat.catalog import MODEL_OPTION, CatalogError, ModelSpec, get_model, load_catalog
from airflow_cvat.envelope import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, BadInput, crash, failure
from airflow_cvat.envelope import emit as _emit

log = logging.getLogger("airflow_cvat.trainer")

RUN_FILE = "run.json"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error becomes BadInput: exit 2 *with* the JSON line, like all bad input."""

    def error(self, message: str):
        raise BadInput(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m airflow_cvat.trainer", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, *, dataset=False, output=True, model_required=True):
        if dataset:
            p.add_argument("--dataset", required=True, help="dataset folder URI (manifest.json + archives/)")
        if output:
            p.add_argument("--output", required=True, help="run folder URI, {root}/runs/{run_id}")
        p.add_argument("--model", required=model_required, help="catalogue model name")
        p.add_argument("--arguments", default=None, help='e.g. "epochs=100;batch_size=24"')
        p.add_argument("--catalog", default=None, help="extra catalogue file (JSON or YAML)")
        p.add_argument("--result-file", default=None, help="local file that also receives the JSON result")

    train = sub.add_parser("train", help="prepare, train, evaluate and export")
    common(train, dataset=True)
    train.add_argument("--base-checkpoint", default=None, help="checkpoint URI to fine-tune from")
    train.add_argument("--validation-fraction", type=float, default=0.1)
    prepare = sub.add_parser("prepare", help="dataset -> TFRecords + label map")
    common(prepare, dataset=True, model_required=False)
    prepare.add_argument("--validation-fraction", type=float, default=0.1)
    for name in ("evaluate", "export"):
        common(sub.add_parser(name, help=f"{name} the trained model in --output"), model_required=False)
    validate = sub.add_parser("validate", help="check a model name and argument string (fast)")
    common(validate, output=False)
    validate.add_argument("--num-images", type=int, default=None)
    base = sub.add_parser("init-base", help="write a randomly initialised base checkpoint")
    common(base)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        options = build_parser().parse_args(argv)
    except BadInput as error:
        return _emit(failure(str(error)), EXIT_BAD_INPUT)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("absl").setLevel(logging.WARNING)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    handlers = {
        "validate": cmd_validate,
        "train": cmd_train,
        "prepare": cmd_prepare,
        "evaluate": cmd_evaluate,
        "export": cmd_export,
        "init-base": cmd_init_base,
    }
    result_file = options.result_file
    try:
        result = handlers[options.command](options)
    except (BadInput, ArgumentError, CatalogError) as error:
        return _emit(failure(str(error)), EXIT_BAD_INPUT, result_file)
    except Exception as error:  # noqa: BLE001 - the pod must always end with a JSON line
        if _is_bad_input(error):
            return _emit(failure(str(error)), EXIT_BAD_INPUT, result_file)
        traceback.print_exc(file=sys.stderr)
        return _emit(crash(error), EXIT_FAILED, result_file)
    return _emit(result, EXIT_OK, result_file)


def _is_bad_input(error: Exception) -> bool:
    from airflow_cvat.trainer.prepare import DatasetError

    if isinstance(error, DatasetError):
        return True
    # runtime and pretrained import TensorFlow: only look at their errors when they are loaded
    # already, so a dataset error reported before training never pays for TensorFlow.
    runtime = sys.modules.get("airflow_cvat.trainer.runtime")
    if runtime is not None and isinstance(error, runtime.DeviceError):
        return True
    pretrained = sys.modules.get("airflow_cvat.trainer.pretrained")
    return pretrained is not None and isinstance(error, pretrained.CheckpointMismatch)


# ---------------------------------------------------------------------------------------------
# Subcommands
# ---------------------------------------------------------------------------------------------


def cmd_validate(options) -> dict:
    catalog = load_catalog(options.catalog)
    args = parse_arguments(options.model, options.arguments, num_images=options.num_images, catalog=catalog)
    return {"status": "ok", "model": args.model, "arguments": args.to_dict()}


def _spec_and_args(options, num_images: int | None = None) -> tuple[ModelSpec, TrainingArguments]:
    catalog = load_catalog(options.catalog)
    spec = get_model(options.model, catalog)
    return spec, parse_arguments(spec.name, options.arguments, num_images=num_images, catalog=catalog)


def cmd_prepare(options) -> dict:
    from airflow_cvat.trainer.storage import Workspace

    _check_fraction(options.validation_fraction)
    with_masks, args = False, None
    if options.model:
        spec, args = _spec_and_args(options)
        with_masks = spec.family == "mask_rcnn"
    workspace = Workspace(options.output)
    report = _prepare(workspace, options.dataset, options.validation_fraction, with_masks, args)
    return {"status": "ok", "output": workspace.uri, "data": workspace.uri_of("data"), **report}


def _check_fraction(fraction: float) -> None:
    from airflow_cvat.trainer.prepare import check_validation_fraction

    check_validation_fraction(fraction)


def _prepare(
    workspace, dataset: str, fraction: float, with_masks: bool, args: TrainingArguments | None = None
) -> dict:
    """prepare.json's report; ``args`` carries max_dropped_images and keep_empty_labels (defaults without)."""
    from airflow_cvat.arguments import MAX_DROPPED_IMAGES
    from airflow_cvat.trainer import prepare

    rules = {
        "keep_empty_labels": args.keep_empty_labels if args else False,
        "max_dropped_images": args.max_dropped_images if args else MAX_DROPPED_IMAGES,
    }
    data_dir = workspace.pull("data")
    report = prepare.is_prepared(data_dir, with_masks, fraction, **rules)
    if report is not None:
        log.info("prepare: already complete in %s, skipping", workspace.uri_of("data"))
        log.info("prepare: %s", prepare.summary_line(report))
        return report
    started = time.monotonic()
    result = prepare.prepare(
        dataset, data_dir, validation_fraction=fraction, with_masks=with_masks, **rules
    ).to_dict()
    log.info("prepare: done in %.1f s", time.monotonic() - started)  # prepare logged its summary line
    workspace.push("data")
    return result


def cmd_train(options) -> dict:
    from airflow_cvat.trainer.storage import Workspace

    spec, args = _spec_and_args(options)  # fail fast, before TensorFlow loads
    _check_fraction(options.validation_fraction)
    workspace = Workspace(options.output)
    if not workspace.exists("data", "prepare.json"):
        from airflow_cvat.trainer.prepare import read_manifest

        read_manifest(options.dataset)  # a missing dataset is refused before TensorFlow loads
    # Staged and checked against the entry before TensorFlow loads; its variables are checked
    # against the built model before the first training step (pretrained.py).
    base = _stage_base_checkpoint(options.base_checkpoint or spec.checkpoint, workspace)
    _check_base(spec, args, base)
    strategy, use_gpu = _configure(args.num_clones)
    report = _prepare(
        workspace, options.dataset, options.validation_fraction, spec.family == "mask_rcnn", args
    )
    spec, args = _spec_and_args(options, num_images=report["train_images"])
    workspace.write_text(
        json.dumps({"model": spec.name, "arguments": options.arguments, "catalog": options.catalog}), RUN_FILE
    )
    config = _config(spec, args, workspace, report["labels"], base, use_gpu)
    result = _train_evaluate_export(workspace, spec, args, config, report["labels"], strategy, use_gpu, base)
    return _with_prepared(workspace, result, report)


def _with_prepared(workspace, result: dict, report: dict) -> dict:
    """The result with what training really used under ``prepared`` (split, drops; prepare.summary)."""
    from airflow_cvat.trainer import prepare

    result = {**result, "prepared": {**prepare.summary(report), "line": prepare.summary_line(report)}}
    workspace.write_text(json.dumps(result, indent=2, sort_keys=True), "result.json")
    return result


def _base_report(workspace, base) -> dict[str, Any]:
    """What the run started from and what initialisation restored (recorded when it ran)."""
    from airflow_cvat.trainer import pretrained

    described = base.to_dict() if base else {"weights": "random (no base weights)"}
    recorded = workspace.pull(pretrained.REPORT)
    restored = json.loads(recorded.read_text())["restored"] if recorded.exists() else None
    return {**described, "restored": restored}


def _train_evaluate_export(workspace, spec, args, config, labels, strategy, use_gpu, base=None) -> dict:
    from airflow_cvat.trainer import evaluate, export, train

    if train.is_trained(workspace, args):
        log.info("train: %d steps already done in %s, skipping", args.steps, workspace.uri_of("checkpoints"))
        step = train.latest_step(workspace.path("checkpoints"))
    else:
        step = train.train(workspace, config, args, strategy, use_gpu)
    metrics = evaluate.is_evaluated(workspace, step) or evaluate.evaluate(workspace, config, labels)
    metrics = _with_test(workspace, config, labels, step, metrics)
    check = None  # the reload-and-predict check of the export (None when export was already done)
    if not export.is_exported(workspace):
        check = export.export(workspace, config, labels)["check"]
    result = {
        "status": "ok",
        "model": spec.name,
        "output": workspace.uri,
        "saved_model": workspace.uri_of("saved_model"),
        "label_map": workspace.uri_of("label_map.json"),
        "classes": workspace.uri_of("classes.csv"),
        "metrics": {k: v for k, v in metrics.items() if k != "step"},
        "steps": step,
        "arguments": args.to_dict(),
        "num_replicas": strategy.num_replicas_in_sync,
        "export_check": check,
        "base_weights": _base_report(workspace, base),
    }
    workspace.write_text(json.dumps(result, indent=2, sort_keys=True), "result.json")
    return result


def _with_test(workspace, config, labels: list[dict], step: int, metrics: dict) -> dict:
    """``metrics`` (Validation) plus ``test``: the model at ``step`` on the Test split, if prepared.

    Validation alone still decides the quality gate; Test is reported beside it. A Test
    evaluation already recorded at ``step`` is not redone (a retried pod, a finished run).
    """
    from airflow_cvat.trainer import evaluate

    images = json.loads(workspace.pull("data", "prepare.json").read_text()).get("test_images", 0)
    if not images:
        return metrics
    test = evaluate.is_test_evaluated(workspace, step)
    if test is None:
        if not any(workspace.path("data").glob(evaluate.TEST_FILES)):
            workspace.pull("data")  # `evaluate` on a fresh pod of a run in object storage
        test = evaluate.evaluate_test(workspace, config, labels, images)
    return {**metrics, "test": test}


def _run_options(options) -> tuple[ModelSpec, TrainingArguments, dict]:
    """Model and arguments for evaluate/export: the options, or what train recorded."""
    from airflow_cvat.trainer import storage

    recorded: dict = {}
    uri = storage.join(options.output, RUN_FILE)
    if storage.exists(uri):
        recorded = json.loads(storage.read_text(uri))
    for key in ("model", "arguments", "catalog"):
        if getattr(options, key) is None:
            setattr(options, key, recorded.get(key))
    if not options.model:
        raise BadInput(f"--model is needed: {options.output} has no {RUN_FILE} from a train run")
    return (*_spec_and_args(options), recorded)


def _load_labels(workspace) -> tuple[list[dict], int]:
    path = workspace.pull("data", "prepare.json")
    if not path.exists():
        raise BadInput(f"{workspace.uri_of('data')} is not prepared; run prepare or train first")
    report = json.loads(path.read_text())
    return report["labels"], report["train_images"]


def cmd_evaluate(options) -> dict:
    from airflow_cvat.trainer import evaluate

    spec, workspace, config, labels = _trained_run(options)
    metrics = evaluate.evaluate(workspace, config, labels)
    metrics = _with_test(workspace, config, labels, metrics["step"], metrics)
    return {"status": "ok", "model": spec.name, "output": workspace.uri, "metrics": metrics}


def cmd_export(options) -> dict:
    from airflow_cvat.trainer import export

    spec, workspace, config, labels = _trained_run(options)
    exported = export.export(workspace, config, labels)
    return {"status": "ok", "model": spec.name, "output": workspace.uri, **exported}


def _trained_run(options) -> tuple[ModelSpec, Any, Any, list[dict]]:
    """What evaluate and export need from a finished train run in ``--output``: model, config, labels."""
    from airflow_cvat.trainer.storage import Workspace

    _run_options(options)
    workspace = Workspace(options.output)
    labels, images = _load_labels(workspace)
    spec, args = _spec_and_args(options, num_images=images)
    _configure(1)
    return spec, workspace, _config(spec, args, workspace, labels, None, False), labels


def cmd_init_base(options) -> dict:
    from airflow_cvat.trainer import base

    spec, args = _spec_and_args(options)
    _configure(1)
    return {"status": "ok", "model": spec.name, **base.init_base(spec, args, options.output)}


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _configure(num_clones: int):
    from airflow_cvat.trainer import runtime

    return runtime.configure(num_clones)


def _config(spec, args, workspace, labels, base, use_gpu):
    from airflow_cvat.trainer import families

    data = families.DataPaths(
        train=str(workspace.path("data", "train-*.tfrecord")),
        validation=str(workspace.path("data", "val-*.tfrecord")),
    )
    return families.build_config(spec, args, len(labels), data, base=base, use_gpu=use_gpu)


def _stage_base_checkpoint(uri: str | None, workspace):
    """The base weights (a ``base.BaseWeights``, downloaded if remote), or None for random ones."""
    from airflow_cvat.trainer import base

    if not uri:
        log.warning(
            "no base checkpoint: training starts from random weights (fine for tests, poor for real use)"
        )
        return None
    try:
        weights = base.stage(uri, workspace.path("base_checkpoint"))
    except (FileNotFoundError, ValueError) as error:
        raise BadInput(str(error)) from None
    label = "RANDOM weights (init-base)" if weights.random else f"pretrained weights from {weights.source}"
    log.info("base: %s, reading %s (%s)", label, weights.modules_text, weights.format)
    return weights


def _check_base(spec: ModelSpec, args: TrainingArguments, weights) -> None:
    """Refuse base weights that cannot fit the entry, before TensorFlow loads (exit 2).

    The variable-by-variable check needs the model and runs before the first training step.
    """
    if weights is None:
        return
    keras = spec.backbone in ("inception_resnet_v2", "nasnet_large")
    if weights.format == "keras_h5" and not keras:
        raise BadInput(
            f"base weights {weights.source} are Keras application weights (h5), but {spec.name} has a "
            f"{spec.backbone} backbone: Keras h5 weights fit only the inception_resnet_v2 and "
            "nasnet_large backbones"
        )
    if weights.format == "keras_h5" and weights.modules != ("backbone",):
        raise BadInput(f"base weights {weights.source}: a Keras h5 file holds a backbone only")
    max_level = spec.options.get(MODEL_OPTION, {}).get("max_level")
    if max_level and args.input_size % 2**max_level:
        # The published COCO RetinaNets have level 7, which only exists at multiples of 128.
        raise BadInput(
            f"{spec.name} has feature levels up to {max_level}: input_size must be a multiple of "
            f"{2**max_level}, got {args.input_size}"
        )
