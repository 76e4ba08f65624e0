"""PublishModelOperator (also ConvertModelOperator): publish a finished training run as a
versioned, deployable model.

From ``{root}/runs/{run_id}/`` (written by the trainer) it publishes::

    {root}/models/{name}/{version}/
        saved_model/                 the trainer's SavedModel, unchanged
        label_map.json classes.csv metrics.json run.json
        model.tflite                 when the family converts (model_card.json says why not otherwise)
        nuclio/                      CVAT serverless function, CPU and GPU variants (see airflow_cvat.deploy)
        cvat_function.py             cvat-sdk auto-annotation function (cvat-cli --function-file)
        model_card.md model_card.json
        report/training.png report/preview-N.png report/history.json    (for the email)
        PUBLISHED.json               written last: a version folder without it is not a version
    {root}/models/{name}/LATEST      JSON {"version", "AP50", ...}; moved only through the quality gate

Version: the publish time in UTC, ``YYYYMMDDTHHMMSSZ`` (sortable as text, unique per model
unless two publishes start in the same second); ``version=`` overrides it (e.g. ``{{ run_id }}``
-derived names). A retried task that finds a complete version of the same run reuses it
instead of publishing a second copy.

Quality gate: LATEST moves when the new AP50 >= LATEST's AP50 - ``quality_margin``, or when
there is no LATEST yet, and never when the new AP50 is below the absolute ``quality_floor``
(default 0.3): a model that finds almost nothing must not become the model that pre-annotates
people's tasks, even as the first of its name. Such a model is still published as a version
(to be inspected), but LATEST stays and pre-annotation skips. A model that fails to load or
predict (checked in a subprocess, see ``airflow_cvat.trainer.convert``) is not published at
all and never moves LATEST. The outcome (moved or not, why, old and new AP50, the version
LATEST names afterwards) is returned as the XCom, for the email and pre-annotation. The rule
itself lives in :mod:`airflow_cvat.operators.quality_gate`, the report's plot in
:mod:`airflow_cvat.operators.history_plot`.

TensorFlow never loads in this process: the check, TFLite conversion, preview images and the
TensorBoard history run in ``python -m airflow_cvat.trainer.convert all``, on the backend the
DAG run chose (``execution``, templated, read when the task runs, like training's):

* ``local``: a subprocess of the worker on a local staged copy of the run, with no storage
  credentials in its environment (:meth:`PublishModelOperator.run_convert`).
* ``kubernetes``: a pod of the training image (``KubernetesConvertOperator``, built by the same
  pod builder as training's, :mod:`airflow_cvat.operators.pod`). The pod reads the run from
  object storage and writes its results to ``{run}/converted/`` itself, with the credentials of
  the ``storage_secret`` Kubernetes Secret (envFrom; never in its arguments). So a Kubernetes
  deployment's workers need no TensorFlow. The pod runs inside this task (not deferrable).

Both answer with the command-line envelope (:mod:`airflow_cvat.envelope`), read by its one
reader: ``{"status": "ok", ...}`` with the check, TFLite, previews and history, or with
``broken`` (the model does not load or predict: nothing is published, the task succeeds);
``{"status": "error"}`` (the command itself failed) fails the task.

Everything else (staging the SavedModel, the gate, the version folder, LATEST) stays here.

Import cost: the DAG file imports this module on every parse; the quality gate, the deployables
and the model card are imported when the task runs.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, ObjectStoragePath
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_cvat.envelope import ERROR, OK
from airflow_cvat.operators.lazy import lazy_attributes
from airflow_cvat.operators.pod import PodCommand, pod_kwargs, pod_operator
from airflow_cvat.operators.process import checked_result, run_with_result, subprocess_environment
from airflow_cvat.operators.training import DEFAULT_IMAGE, DEFAULT_STORAGE_SECRET, POD_RESULT_FILE

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_cvat.operators.quality_gate import GateDecision

MARKER = "PUBLISHED.json"
LATEST = "LATEST"
VERSION_FORMAT = "%Y%m%dT%H%M%SZ"
RUN_FILES = ("result.json", "label_map.json", "classes.csv", "metrics.json")
RUN_FOLDERS = ("saved_model", "tensorboard")
SECRET_ENV_PREFIXES = ("AIRFLOW_CONN_", "AIRFLOW_VAR_", "AWS_SECRET", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY")
CONVERT_MODULE = "airflow_cvat.trainer.convert"
CONVERTED = "converted"
"""Where a convert pod writes its results, inside the run folder: ``{run}/converted/``."""
EXECUTIONS = ("local", "kubernetes")


class PublishError(RuntimeError):
    """The run cannot be published (not finished, missing files); the message says which."""


# ---- storage helpers (ObjectStoragePath: file:// and s3:// alike) ------------------------------


def storage_path(uri: str, conn_id: str | None = None) -> ObjectStoragePath:
    """An ObjectStoragePath; a bare local path becomes file://, the connection applies to remote URIs."""
    if "://" not in uri:
        uri = Path(uri).absolute().as_uri()
    if uri.startswith("file://"):
        return ObjectStoragePath(uri)
    return ObjectStoragePath(uri, conn_id=conn_id)


def uri_of(path: ObjectStoragePath) -> str:
    """The plain URI of a path, without the connection id Airflow writes into s3://conn@bucket."""
    return f"{path.protocol}://{path.path}" if path.protocol != "file" else Path(path.path).as_uri()


def read_json(path: ObjectStoragePath) -> Any | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def write_bytes(path: ObjectStoragePath, data: bytes) -> None:
    """Write one object; locally through a rename, so a reader never sees half of LATEST or a marker."""
    if path.protocol == "file":
        target = Path(path.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, target)
        return
    with path.open("wb") as handle:  # S3 PUTs are atomic: the object appears whole or not at all
        handle.write(data)


def download_tree(source: ObjectStoragePath, target: Path, pattern: str = "**") -> int:
    """Copy every file under ``source`` (matching ``pattern``) into ``target``; return the count."""
    fs, root = source.fs, source.path.rstrip("/")
    if not fs.exists(root):
        return 0
    count = 0
    for remote in fs.find(root):
        relative = remote[len(root) :].lstrip("/")
        if not Path(relative).match(pattern) and pattern != "**":
            continue
        local = target / relative
        local.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(remote, str(local))
        count += 1
    return count


def upload_tree(source: Path, target: ObjectStoragePath, skip: Iterable[str] = ()) -> list[str]:
    """Upload every file under ``source`` to ``target`` (relative paths kept); return them sorted."""
    skipped = set(skip)
    fs, root = target.fs, target.path.rstrip("/")
    written = []
    for local in sorted(p for p in source.rglob("*") if p.is_file()):
        relative = local.relative_to(source).as_posix()
        if relative in skipped:
            continue
        remote = f"{root}/{relative}"
        if target.protocol == "file":
            Path(remote).parent.mkdir(parents=True, exist_ok=True)
        fs.put_file(str(local), remote)
        written.append(relative)
    return written


# ---- the operator -----------------------------------------------------------------------------


class PublishModelOperator(BaseOperator):
    """Publish a finished training run as ``{root}/models/{model_name}/{version}/`` and gate LATEST.

    :param run_uri: the run folder, ``{root}/runs/{run_id}`` (file:// or s3://), or the trainer's
        JSON result (a dict with ``output``), e.g. the training task's XCom.
    :param root: the artifact root; models go to ``{root}/models/{model_name}/``.
    :param model_name: the published model's name (often the catalogue name or a team's name).
    :param dataset_manifest: URI of the dataset's manifest.json (or its folder) for the model card.
    :param quality_margin: how much lower than LATEST's AP50 a new model may be and still move it.
    :param quality_floor: the AP50 below which a model never becomes LATEST (0 switches it off).
    :param storage_conn_id: the connection for s3:// URIs (None: the default credential chain).
    :param version: the version folder's name; default: publish time, ``YYYYMMDDTHHMMSSZ`` UTC.
    :param tflite: try a TFLite conversion (a few seconds to minutes; False skips it).
    :param preview_images: how many validation images to draw predictions on for the email.
    :param convert_timeout: seconds the TensorFlow subprocess (or pod) may take.
    :param execution: where the TensorFlow half runs, ``local`` or ``kubernetes`` (templated: the
        DAG passes the run's resolved ``execution``).
    :param image: the training image (Kubernetes only).
    :param machine_type: a machine type name for the pod (:mod:`airflow_cvat.machines`); default
        ``cpu``: checking and converting a SavedModel needs no GPU.
    :param storage_secret: Kubernetes Secret with the pod's ``AWS_*`` storage credentials (envFrom);
        None: the pod's own identity.
    :param pod_arguments: more KubernetesPodOperator arguments for the pod (namespace,
        kubernetes_conn_id, labels, ...).

    Returns (XCom) the outcome: ``published``, ``version``, ``uri``, ``latest`` (the gate decision:
    ``moved``, ``reason``, ``new_ap50``, ``old_ap50``, ``old_version``, ``margin``), ``metrics``,
    ``tflite``, ``files`` (URIs of the card, plot and previews) and ``storage_conn_id``.
    """

    template_fields: Sequence[str] = (
        "run_uri",
        "root",
        "model_name",
        "dataset_manifest",
        "version",
        "execution",
        "machine_type",
    )
    ui_color = "#d6f0e0"

    def __init__(
        self,
        *,
        run_uri: str | dict,
        root: str,
        model_name: str,
        dataset_manifest: str | None = None,
        quality_margin: float = 0.02,
        quality_floor: float = 0.3,
        storage_conn_id: str | None = None,
        version: str | None = None,
        tflite: bool = True,
        preview_images: int = 4,
        convert_timeout: float = 3600,
        execution: str = "local",
        image: str = DEFAULT_IMAGE,
        machine_type: str | None = "cpu",
        storage_secret: str | None = DEFAULT_STORAGE_SECRET,
        pod_arguments: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if quality_margin < 0:
            raise ValueError(f"quality_margin must be >= 0, got {quality_margin}")
        if not 0 <= quality_floor <= 1:
            raise ValueError(f"quality_floor is an AP50 between 0 and 1, got {quality_floor}")
        self.run_uri = run_uri
        self.root = root
        self.model_name = model_name
        self.dataset_manifest = dataset_manifest
        self.quality_margin = quality_margin
        self.quality_floor = quality_floor
        self.storage_conn_id = storage_conn_id
        self.version = version
        self.tflite = tflite
        self.preview_images = preview_images
        self.convert_timeout = convert_timeout
        self.execution = execution
        self.image = image
        self.machine_type = machine_type
        self.storage_secret = storage_secret
        self.pod_arguments = dict(pod_arguments or {})
        self._pod: Any = None

    def execute(self, context: Context) -> dict[str, Any]:
        if self.execution not in EXECUTIONS:
            raise AirflowFailException(f"execution must be 'local' or 'kubernetes', got {self.execution!r}")
        run = self.path(_run_uri(self.run_uri))
        models = self.path(self.root) / "models" / self.model_name
        result = self._finished_result(run)
        latest = read_json(models / LATEST)
        reused = find_published(models, uri_of(run), result)
        if reused:
            return self._reuse(models, reused, latest)
        version = free_version(models, self.version or datetime.now(UTC).strftime(VERSION_FORMAT))
        with tempfile.TemporaryDirectory(prefix="airflow-cvat-publish-") as scratch:
            staged, built = Path(scratch, "run"), Path(scratch, "version")
            converted = self._convert(run, staged, Path(scratch, "convert"), context)
            metrics = json.loads((staged / "metrics.json").read_text())
            decision = self.decide(metrics.get("AP50"), latest, broken=converted.get("broken"))
            if converted.get("broken"):
                self.log.warning("not publishing: %s", decision.reason)
                return self._outcome(models, version, decision, metrics, converted, published=False)
            self._build(staged, Path(scratch, "convert"), built, version, result, metrics, converted)
            target = models / version
            files = upload_tree(built, target)
            marker = {
                "version": version,
                "run": uri_of(run),
                "run_result": result,
                "AP50": metrics.get("AP50"),
                "published": _now(),
                "files": files,
            }
            write_bytes(target / MARKER, json.dumps(marker, indent=2).encode())
            self.log.info("published %s (%d files)", uri_of(target), len(files))
        if decision.moved:
            self._move_latest(models, version, run, metrics, latest)
        self.log.info("quality gate: %s", decision.reason)
        return self._outcome(models, version, decision, metrics, converted, published=True)

    def decide(
        self, new_ap50: float | None, latest: dict[str, Any] | None, broken: str | None = None
    ) -> GateDecision:
        from airflow_cvat.operators.quality_gate import decide

        return decide(new_ap50, latest, self.quality_margin, broken=broken, floor=self.quality_floor)

    # -- steps --------------------------------------------------------------------------------

    def path(self, uri: str) -> ObjectStoragePath:
        return storage_path(uri, self.storage_conn_id)

    def _finished_result(self, run: ObjectStoragePath) -> dict[str, Any]:
        result = read_json(run / "result.json")
        if result is None:
            raise PublishError(
                f"{uri_of(run)} has no result.json: the training run did not finish (the trainer writes "
                "it last); re-run the training task"
            )
        if result.get("status") != "ok":
            raise PublishError(f"the training run {uri_of(run)} ended with status {result.get('status')!r}")
        return result

    def _convert(
        self, run: ObjectStoragePath, staged: Path, output: Path, context: Context
    ) -> dict[str, Any]:
        """The TensorFlow half on the run's backend; its files end up in ``output`` either way."""
        if self.execution == "local":
            self._stage(run, staged)
            return self.run_convert(staged, output)
        self._stage(run, staged, tensorflow_inputs=False)  # the SavedModel and label map, to publish
        converted = self.run_convert_in_pod(uri_of(run), uri_of(run / CONVERTED), context)
        download_tree(run / CONVERTED, output)
        return converted

    def _stage(self, run: ObjectStoragePath, staged: Path, *, tensorflow_inputs: bool = True) -> None:
        """A local copy of what publishing reads; with ``tensorflow_inputs`` also what the local
        TensorFlow half reads (events, validation TFRecords): it reads paths, never storage."""
        for name in RUN_FILES:
            if (run / name).exists():
                write_local(staged / name, (run / name).read_bytes())
        for name in RUN_FOLDERS if tensorflow_inputs else ("saved_model",):
            download_tree(run / name, staged / name)
        if tensorflow_inputs:
            download_tree(run / "data", staged / "data", pattern="val-*.tfrecord")
        if (run / "data" / "label_map.json").exists():
            write_local(staged / "data" / "label_map.json", (run / "data" / "label_map.json").read_bytes())
        missing = [n for n in ("saved_model/saved_model.pb", "metrics.json") if not (staged / n).exists()]
        if missing:
            raise PublishError(f"the run {uri_of(run)} lacks {', '.join(missing)}; was it exported?")

    def run_convert(self, staged: Path, output: Path) -> dict[str, Any]:
        """``python -m airflow_cvat.trainer.convert all`` in a subprocess; its log goes to the task log.

        Stopped after ``convert_timeout`` seconds: a hung conversion must not hold the task for ever.
        """

        def command(result_file: str) -> list[str]:
            argv = [
                sys.executable,
                "-m",
                CONVERT_MODULE,
                "all",
                "--run",
                str(staged),
                "--output",
                str(output),
            ]
            argv += ["--count", str(self.preview_images), "--result-file", result_file]
            return [*argv, "--no-tflite"] if not self.tflite else argv

        finished, result = run_with_result(
            command,
            child_env(),
            self.log.info,
            prefix="airflow-cvat-convert-",
            message="running %s",
            timeout=self.convert_timeout,
        )
        if finished.timed_out:
            raise PublishError(
                f"{CONVERT_MODULE} all ran longer than {self.convert_timeout:.0f} s and was stopped"
            )
        return checked_result(finished, result, command=f"{CONVERT_MODULE} all", work="model conversion")

    def run_convert_in_pod(self, run_uri: str, output_uri: str, context: Context) -> dict[str, Any]:
        """``trainer.convert all`` in a pod of the training image, which reads and writes storage.

        The pod operator runs inside this task (its XCom, the command's result file, is the
        answer); ``on_kill`` stops it with the task.
        """
        pod_class = __getattr__("KubernetesConvertOperator")
        arguments = {"active_deadline_seconds": int(self.convert_timeout), **self.pod_arguments}
        self._pod = pod_class(
            task_id=self.task_id,
            run_uri=run_uri,
            output_uri=output_uri,
            tflite=self.tflite,
            preview_images=self.preview_images,
            image=self.image,
            machine_type=self.machine_type,
            storage_secret=self.storage_secret,
            **arguments,
        )
        result = self._pod.execute(context)
        if isinstance(result, dict) and result.get("status") == OK:
            return result
        if isinstance(result, dict) and result.get("status") == ERROR:
            raise AirflowException(f"model conversion failed: {result.get('error') or result}")
        raise PublishError(f"the convert pod returned no result ({result!r}); see its log above")

    def on_kill(self) -> None:
        if self._pod is not None:
            self._pod.on_kill()

    def _build(self, staged, converted_dir, built, version, result, metrics, converted) -> None:
        """Assemble the version folder locally; uploaded as a whole, then the marker."""
        from airflow_cvat import deploy
        from airflow_cvat.deploy import card as cards

        built.mkdir(parents=True)
        shutil.copytree(staged / "saved_model", built / "saved_model")
        for name in ("label_map.json", "classes.csv", "metrics.json"):
            if (staged / name).exists():
                shutil.copy2(staged / name, built / name)
        (built / "run.json").write_text(json.dumps(result, indent=2))
        labels = _labels(staged)
        if not (built / "label_map.json").exists():
            (built / "label_map.json").write_text(json.dumps({"labels": labels}, indent=2))
        masks = bool(converted["check"].get("masks"))
        deploy.write_nuclio(
            built / "nuclio", model_name=self.model_name, version=version, labels=labels, masks=masks
        )
        shutil.copytree(staged / "saved_model", built / "nuclio" / "saved_model")
        deploy.write_cvat_function(built)
        tflite = converted.get("tflite") or {}
        if tflite.get("status") == "converted":
            shutil.copy2(converted_dir / tflite["file"], built / "model.tflite")
            tflite = {**tflite, "file": "model.tflite"}
        self._report(converted_dir, built / "report", converted)
        card = cards.card_json(
            model_name=self.model_name,
            version=version,
            created=_now(),
            run_uri=_run_uri(self.run_uri),
            result=result,
            labels=labels,
            metrics=metrics,
            data=cards.manifest_summary(self._manifest()),
            base_model=_base_model(result),
            tflite=tflite,
            files=sorted(
                p.relative_to(built).as_posix()
                for p in built.rglob("*")
                if p.is_file() and "saved_model/" not in p.as_posix()
            ),
        )
        (built / "model_card.json").write_text(json.dumps(card, indent=2, default=str))
        (built / "model_card.md").write_text(cards.card_markdown(card))

    def _report(self, converted_dir: Path, report: Path, converted: dict[str, Any]) -> None:
        report.mkdir(parents=True, exist_ok=True)
        for preview in (converted.get("previews") or {}).get("images", []):
            shutil.copy2(converted_dir / "previews" / preview["file"], report / preview["file"])
        history_file = converted_dir / "history.json"
        if history_file.exists():
            shutil.copy2(history_file, report / "history.json")
            try:
                from airflow_cvat.operators.history_plot import plot_history

                plot_history(json.loads(history_file.read_text()), report / "training.png")
            except Exception:  # noqa: BLE001 - a missing plot must not stop publishing
                self.log.exception("could not draw the training plot")

    def _manifest(self) -> dict[str, Any] | None:
        if not self.dataset_manifest:
            return None
        path = self.path(self.dataset_manifest)
        if not path.name.endswith(".json"):
            path = path / "manifest.json"
        manifest = read_json(path)
        if manifest is None:
            self.log.warning("no dataset manifest at %s; the model card will say so", uri_of(path))
        return manifest

    def _move_latest(self, models, version, run, metrics, latest) -> None:
        """LATEST is written after the version's marker: it never names an incomplete version."""
        pointer = {
            "version": version,
            "AP50": metrics.get("AP50"),
            "AP": metrics.get("AP"),
            "uri": uri_of(models / version),
            "run": uri_of(run),
            "moved": _now(),
            "previous": None if latest is None else {k: latest.get(k) for k in ("version", "AP50")},
        }
        write_bytes(models / LATEST, json.dumps(pointer, indent=2).encode())

    def _reuse(self, models, marker: dict[str, Any], latest: dict[str, Any] | None) -> dict[str, Any]:
        """A retry after a complete publish: no second copy; finish the LATEST step if it was missed."""
        version = marker["version"]
        metrics = read_json(models / version / "metrics.json") or {}
        self.log.info("the run is already published as %s; reusing it", version)
        if latest and latest.get("version") == version:
            from airflow_cvat.operators.quality_gate import GateDecision

            previous = latest.get("previous") or {}
            decision = GateDecision(
                True,
                "already LATEST (published by an earlier try)",
                metrics.get("AP50"),
                previous.get("AP50"),
                previous.get("version"),
                self.quality_margin,
            )
        else:
            decision = self.decide(metrics.get("AP50"), latest)
            if decision.moved:
                self._move_latest(models, version, self.path(marker["run"]), metrics, latest)
        card = read_json(models / version / "model_card.json") or {}
        return self._outcome(
            models, version, decision, metrics, {"tflite": card.get("tflite")}, published=True
        )

    def _outcome(self, models, version, decision, metrics, converted, *, published) -> dict[str, Any]:
        target = models / version
        report = target / "report"
        files: dict[str, Any] = {}
        if published:
            files = {
                "model_card": uri_of(target / "model_card.md"),
                "saved_model": uri_of(target / "saved_model"),
                "nuclio": uri_of(target / "nuclio"),
                "cvat_function": uri_of(target / "cvat_function.py"),
                "plot": uri_of(report / "training.png") if (report / "training.png").exists() else None,
                "previews": [uri_of(p) for p in sorted(report.glob("preview-*.png"))]
                if report.exists()
                else [],
            }
        return {
            "model_name": self.model_name,
            "version": version,
            "uri": uri_of(target),
            "published": published,
            "latest": {
                **asdict(decision),
                "uri": uri_of(models / LATEST),
                "current": _latest_version(models),
            },
            "metrics": {k: metrics.get(k) for k in ("AP", "AP50", "AP75", "per_class")},
            "tflite": converted.get("tflite"),
            "error": converted.get("broken"),
            "files": files,
            "storage_conn_id": self.storage_conn_id,
        }


ConvertModelOperator = PublishModelOperator
"""The name the mission (and existing DAGs) use; the same operator."""


# ---- the Kubernetes backend of the TensorFlow half ----------------------------------------------


class KubernetesConvertMixin(PodCommand):
    """``python -m airflow_cvat.trainer.convert all`` in a pod; see KubernetesConvertOperator.

    Built by :meth:`PublishModelOperator.run_convert_in_pod`, not placed in DAGs itself.

    :param run_uri: the run folder the pod reads (``s3://...``; file:// only on a shared volume).
    :param output_uri: where the pod writes model.tflite, previews/ and history.json.
    :param tflite, preview_images: as for PublishModelOperator.
    :param image, machine_type, storage_secret: as for the training pod.
    """

    def __init__(
        self,
        *,
        run_uri: str,
        output_uri: str,
        tflite: bool = True,
        preview_images: int = 4,
        image: str,
        machine_type: str | None = "cpu",
        storage_secret: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**pod_kwargs(kwargs, image=image, name="cvat-publish"))
        self.run_uri = run_uri
        self.output_uri = output_uri
        self.tflite = tflite
        self.preview_images = preview_images
        self.machine_type = machine_type
        self.storage_secret = storage_secret

    def configure_pod(self, context: Context | None) -> None:
        """The command (URIs only, never credentials), the machine and the storage Secret."""
        args = ["all", "--run", self.run_uri, "--output", self.output_uri]
        args += ["--count", str(self.preview_images), "--result-file", POD_RESULT_FILE]
        if not self.tflite:
            args.append("--no-tflite")
        machine = self.resolve_machine()
        self.log.info("Converting on machine type %s: %s", machine.name, " ".join(args))
        self.set_command(CONVERT_MODULE, args, machine, num_clones=1, secrets=[self.storage_secret])


__getattr__ = lazy_attributes(
    globals(),
    {
        "KubernetesConvertOperator": pod_operator(
            __name__,
            "KubernetesConvertOperator",
            KubernetesConvertMixin,
            template_fields=("run_uri", "output_uri", "machine_type", "storage_secret"),
            ui_color="#d6e6f0",
        ),
        # Callers import the gate from here; quality_gate owns it.
        "decide": "airflow_cvat.operators.quality_gate",
        "GateDecision": "airflow_cvat.operators.quality_gate",
    },
)


# ---- helpers ------------------------------------------------------------------------------------


def _latest_version(models: ObjectStoragePath) -> str | None:
    """The version LATEST names now (after the gate), or None when there is no LATEST."""
    return (read_json(models / LATEST) or {}).get("version")


def _run_uri(run: str | dict) -> str:
    if isinstance(run, dict):  # the trainer's JSON result, as the training task's XCom
        return run["output"]
    return str(run)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_local(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _labels(staged: Path) -> list[dict[str, Any]]:
    for candidate in (staged / "label_map.json", staged / "data" / "label_map.json"):
        if candidate.exists():
            data = json.loads(candidate.read_text())
            return list(data["labels"] if isinstance(data, dict) else data)
    raise PublishError("the run has no label_map.json; the model's class ids cannot be named")


def _base_model(result: dict[str, Any]) -> dict[str, Any]:
    """Catalogue facts of the run's base model (a user's own entry may be unknown here)."""
    name = result.get("model")
    try:
        from airflow_cvat.catalog import get_model

        spec = get_model(name)
        return {"name": name, "family": spec.family, "backbone": spec.backbone, "checkpoint": spec.checkpoint}
    except Exception:  # noqa: BLE001 - a custom catalogue entry still gets a card
        return {"name": name, "family": None, "backbone": None, "checkpoint": None}


def find_published(models: ObjectStoragePath, run_uri: str, result: dict[str, Any]) -> dict[str, Any] | None:
    """The marker of a complete version already published from this run (same result), if any."""
    if not models.exists():
        return None
    for folder in sorted(models.iterdir(), key=lambda p: p.name, reverse=True):
        if folder.name == LATEST:
            continue
        marker = read_json(folder / MARKER)
        if marker and marker.get("run") == run_uri and marker.get("run_result") == result:
            return marker
    return None


def free_version(models: ObjectStoragePath, version: str) -> str:
    """``version``, or ``version-2``, ``-3``...: a complete version is never overwritten."""
    candidate, number = version, 1
    while (models / candidate / MARKER).exists():
        number += 1
        candidate = f"{version}-{number}"
    return candidate


def published_versions(root: str, model_name: str, conn_id: str | None = None) -> list[str]:
    """Complete versions of a model, oldest first (folders without PUBLISHED.json are left out)."""
    models = storage_path(root, conn_id) / "models" / model_name
    if not models.exists():
        return []
    return sorted(p.name for p in models.iterdir() if p.name != LATEST and (p / MARKER).exists())


def child_env() -> dict[str, str]:
    """The environment for the TensorFlow subprocess, without connection secrets (it reads local paths)."""
    return subprocess_environment(SECRET_ENV_PREFIXES)
