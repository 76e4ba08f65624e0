"""The training argument string, as users typed it into CVAT: ``epochs=100;batch_size=24;...``.

Both worlds import this module (the Airflow side validates a run's conf before it spends a GPU
pod on it; the trainer applies the result), so it uses the standard library only.

Keys (``;``-separated ``key=value``; spaces around either are ignored; ``-`` and ``_`` are
interchangeable in keys, so ``stage-1-epochs`` works as the seed spelled it):

``epochs``
    Training **steps**, not passes over the data: the seed's word, kept because users know it.
    When missing, the seed's rule applies: ``images / batch_size * steps_per_image`` (1000 for
    the SSD model, 500 for the R-CNNs), or the catalogue default when the image count is unknown.
    Not accepted by Mask R-CNN, which uses the three stage keys instead.
``batch_size``
    The **global** batch, split evenly across ``num_clones`` replicas (as the TF1 Object
    Detection API did); it must be a multiple of ``num_clones``.
``initial_learning_rate``
    Peak learning rate of the cosine schedule (after a short linear warm-up).
``num_clones``
    Number of GPUs (replicas of tf.distribute.MirroredStrategy). frcnn-nas-coco needs 2 or more.
``input_size``
    Square side in pixels the images are resized to (64 to 2048, a multiple of 64: the
    coarsest feature level is 1/64 of the image, so base checkpoints fit any allowed size).
``checkpoint_steps``
    Write a checkpoint every this many steps (so a retried pod resumes, not restarts).
``eval_steps``
    Evaluate on the validation split every this many steps, so the report shows an AP curve,
    not one point (default: a fifth of the run, i.e. five points with the final evaluation).
    0 evaluates only at the end. Each evaluation costs one pass over the validation split.
``max_dropped_images``
    Share (0 to 1) of the exported images prepare may drop (not in the zip, not decodable)
    before it refuses the dataset, before training (default 0.05).
``keep_empty_labels``
    true: a label without training shapes is still a detector class (default false: such labels
    are left out of the model and listed with the reason).
``stage1_epochs``, ``stage2_epochs``, ``stage3_epochs``
    Mask R-CNN only: full passes over the training split for heads only, then ResNet stage 4
    and up, then all layers at a tenth of the learning rate. 0 skips a stage.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from airflow_cvat.catalog import CatalogError, ModelSpec, get_model

MAX_INPUT_SIZE = 2048
SIZE_STEP = 64
"""input_size granularity: the coarsest feature level (6) of every family is 1/64 of the image."""
MAX_CLONES = 64
MAX_DROPPED_IMAGES = 0.05
"""Default max_dropped_images: prepare refuses a dataset that lost more of its images."""
EVALUATIONS_PER_RUN = 5
"""Default number of validation evaluations in a run (the last one at the end of training)."""

_KEYS_ALL = (
    "epochs",
    "batch_size",
    "initial_learning_rate",
    "num_clones",
    "input_size",
    "checkpoint_steps",
    "eval_steps",
    "max_dropped_images",
    "keep_empty_labels",
)
_KEYS_STAGES = ("stage1_epochs", "stage2_epochs", "stage3_epochs")
_ALIASES = {
    "steps": "epochs",
    "num_steps": "epochs",
    "learning_rate": "initial_learning_rate",
    "lr": "initial_learning_rate",
    "stage_1_epochs": "stage1_epochs",
    "stage_2_epochs": "stage2_epochs",
    "stage_3_epochs": "stage3_epochs",
    "num_gpus": "num_clones",
}


_KEY_VALUE = r"[A-Za-z][A-Za-z0-9_-]*\s*=\s*[^;=\s]+"
ARGUMENTS_PATTERN = rf"^\s*(?:{_KEY_VALUE}(?:\s*[;\n]\s*{_KEY_VALUE})*\s*;?)?\s*$"
"""The shape of an argument string (``key=value`` pairs joined by ``;`` or newlines), as a JSON
Schema ``pattern``: the DAG's form refuses a malformed string before a run exists. Whether the
keys and values suit the model is for :func:`parse_arguments`, which knows the model."""


class ArgumentError(ValueError):
    """The argument string is wrong; the message says what was wrong and what is valid."""


@dataclass(frozen=True)
class TrainingArguments:
    """Validated arguments with every default filled in (what the trainer runs with).

    ``steps`` is the total number of optimizer steps (for Mask R-CNN the sum of the stages);
    ``steps_source`` says where it came from: "given", "images" (the seed's rule) or "default".
    """

    model: str
    family: str
    steps: int
    batch_size: int
    initial_learning_rate: float
    num_clones: int
    input_size: int
    checkpoint_steps: int
    eval_steps: int
    stage_steps: tuple[int, int, int] | None
    stage_epochs: tuple[int, int, int] | None
    steps_source: str
    max_dropped_images: float = MAX_DROPPED_IMAGES
    keep_empty_labels: bool = False

    @property
    def per_replica_batch_size(self) -> int:
        return self.batch_size // self.num_clones

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("stage_steps", "stage_epochs"):
            if data[key] is not None:
                data[key] = list(data[key])
        data["epochs"] = self.steps  # the seed's word, for people reading results
        return data


def valid_keys(spec: ModelSpec) -> tuple[str, ...]:
    """The keys a model accepts (Mask R-CNN takes stage epochs instead of epochs)."""
    if spec.family == "mask_rcnn":
        return tuple(k for k in _KEYS_ALL if k != "epochs") + _KEYS_STAGES
    return _KEYS_ALL


def split_arguments(text: str | None) -> dict[str, str]:
    """``"a=1; b=2"`` -> ``{"a": "1", "b": "2"}``, keys normalised; syntax errors raise."""
    values: dict[str, str] = {}
    for part in (text or "").replace("\n", ";").split(";"):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise ArgumentError(f"argument {part!r} is not key=value; write e.g. 'epochs=100;batch_size=24'")
        key, _, value = part.partition("=")
        key = key.strip().lower().replace("-", "_")
        key = _ALIASES.get(key, key)
        if not key or not value.strip():
            raise ArgumentError(f"argument {part!r} needs both a key and a value")
        if key in values:
            raise ArgumentError(f"argument {key!r} is given twice")
        values[key] = value.strip()
    return values


def merge_num_clones(text: str | None, num_clones: Any) -> str:
    """The argument string with a separately given num_clones (the form has a field for it).

    The one rule, wherever num_clones arrives twice: empty or the default 1 adds nothing the
    string does not say (the form's field always holds a value, 1 unless a person changed it);
    any other value goes into the string, and a string that says otherwise is refused, because
    two GPU counts for one run is a mistake, not a preference.
    """
    text = (text or "").strip()
    if num_clones in (None, "", "None"):
        return text
    try:
        clones = int(num_clones)
    except (TypeError, ValueError):
        raise ArgumentError(f"num_clones must be a whole number, got {num_clones!r}") from None
    given = split_arguments(text).get("num_clones")
    if given is None:
        return ";".join(part for part in (text.rstrip(";"), f"num_clones={clones}") if part)
    if clones != 1 and str(clones) != given:
        raise ArgumentError(
            f"num_clones={clones} conflicts with num_clones={given} in the arguments; give it once"
        )
    return text


def parse_arguments(
    model: str,
    text: str | None,
    *,
    num_images: int | None = None,
    catalog: dict[str, ModelSpec] | None = None,
) -> TrainingArguments:
    """Validate ``text`` for ``model`` and fill the defaults; raise ArgumentError saying why not.

    ``num_images`` (training images) lets the seed's rule size the run when epochs is missing.
    """
    try:
        spec = get_model(model, catalog)
    except CatalogError as error:
        raise ArgumentError(str(error)) from None
    values = split_arguments(text)
    allowed = valid_keys(spec)
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        hint = " (Mask R-CNN uses stage1_epochs, stage2_epochs, stage3_epochs)" if "epochs" in unknown else ""
        raise ArgumentError(
            f"unknown argument(s) {', '.join(unknown)} for model {model!r}{hint}; "
            f"valid arguments: {', '.join(allowed)}"
        )
    batch_size = _int(values, "batch_size", spec.batch_size, minimum=1)
    num_clones = _int(values, "num_clones", 1, minimum=1, maximum=MAX_CLONES)
    learning_rate = _float(values, "initial_learning_rate", spec.initial_learning_rate)
    input_size = _int(values, "input_size", spec.input_size, minimum=SIZE_STEP, maximum=MAX_INPUT_SIZE)
    if input_size % SIZE_STEP:
        raise ArgumentError(
            f"input_size={input_size} must be a multiple of {SIZE_STEP} (e.g. {_round_size(input_size)})"
        )
    _check_combinations(spec, batch_size=batch_size, num_clones=num_clones)
    if num_images is not None and num_images < 1:
        raise ArgumentError("the dataset has no training images; export finished, annotated jobs first")
    stage_epochs = stage_steps = None
    if spec.family == "mask_rcnn":
        stage_epochs, stage_steps = _stages(spec, values, batch_size, num_images)
        steps, source = sum(stage_steps), "given" if any(k in values for k in _KEYS_STAGES) else "default"
    elif "epochs" in values:
        steps, source = _int(values, "epochs", spec.epochs, minimum=1), "given"
    elif num_images:
        steps, source = max(1, math.ceil(num_images / batch_size * spec.steps_per_image)), "images"
    else:
        steps, source = spec.epochs, "default"
    checkpoint_steps = _int(values, "checkpoint_steps", max(1, min(1000, steps // 10 or 1)), minimum=1)
    eval_steps = _int(values, "eval_steps", math.ceil(steps / EVALUATIONS_PER_RUN), minimum=0)
    return TrainingArguments(
        model=spec.name,
        family=spec.family,
        steps=steps,
        batch_size=batch_size,
        initial_learning_rate=learning_rate,
        num_clones=num_clones,
        input_size=input_size,
        checkpoint_steps=checkpoint_steps,
        eval_steps=eval_steps,
        stage_steps=stage_steps,
        stage_epochs=stage_epochs,
        steps_source=source,
        max_dropped_images=_share(values, "max_dropped_images", MAX_DROPPED_IMAGES),
        keep_empty_labels=_flag(values, "keep_empty_labels", False),
    )


def _check_combinations(spec: ModelSpec, *, batch_size: int, num_clones: int) -> None:
    if num_clones < spec.min_clones:
        raise ArgumentError(
            f"model {spec.name!r} needs at least {spec.min_clones} GPUs (num_clones>={spec.min_clones}); "
            f"got num_clones={num_clones}. Raise num_clones or choose another model"
        )
    if batch_size % num_clones:
        raise ArgumentError(
            f"batch_size={batch_size} is the global batch and must split evenly across "
            f"num_clones={num_clones} replicas; use a multiple of {num_clones}, "
            f"e.g. batch_size={num_clones * max(1, round(batch_size / num_clones))}"
        )


def _stages(
    spec: ModelSpec, values: dict[str, str], batch_size: int, num_images: int | None
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Stage epochs (passes) and the steps they take; unknown image counts count as one batch."""
    defaults = spec.stage_epochs or (1, 2, 3)
    epochs = tuple(
        _int(values, key, default, minimum=0) for key, default in zip(_KEYS_STAGES, defaults, strict=True)
    )
    if not any(epochs):
        raise ArgumentError("at least one of stage1_epochs, stage2_epochs, stage3_epochs must be above 0")
    per_epoch = max(1, math.ceil((num_images or batch_size) / batch_size))
    return epochs, tuple(e * per_epoch for e in epochs)  # type: ignore[return-value]


def _int(values: dict[str, str], key: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
    if key not in values:
        return default
    raw = values[key]
    try:
        number = float(raw)
    except ValueError:
        raise ArgumentError(f"{key}={raw!r} is not a number; {key} must be a whole number") from None
    if not math.isfinite(number) or number != int(number):
        raise ArgumentError(f"{key}={raw!r} must be a whole number")
    value = int(number)
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and at most {maximum}" if maximum is not None else ""
        raise ArgumentError(f"{key}={raw} is out of range; it must be at least {minimum}{upper}")
    return value


def _number(values: dict[str, str], key: str, default: float, example: str, fits, range_text: str) -> float:
    """A decimal argument: the default when absent, else a number that ``fits``, or an error saying
    what to write."""
    if key not in values:
        return default
    raw = values[key]
    try:
        value = float(raw)
    except ValueError:
        raise ArgumentError(f"{key}={raw!r} is not a number; write e.g. {key}={example}") from None
    if not math.isfinite(value) or not fits(value):
        raise ArgumentError(f"{key}={raw} is out of range; it must be {range_text}")
    return value


def _float(values: dict[str, str], key: str, default: float) -> float:
    """A learning rate: above 0 and below 10."""
    return _number(values, key, default, "0.004", lambda v: 0 < v < 10, "above 0 and below 10")


def _share(values: dict[str, str], key: str, default: float) -> float:
    """A fraction from 0 to 1 inclusive."""
    return _number(values, key, default, "0.05", lambda v: 0 <= v <= 1, "from 0 to 1 (a share, 0.05 is 5%)")


def _flag(values: dict[str, str], key: str, default: bool) -> bool:
    if key not in values:
        return default
    raw = values[key].lower()
    if raw not in ("true", "false", "1", "0", "yes", "no"):
        raise ArgumentError(f"{key}={values[key]!r} must be true or false")
    return raw in ("true", "1", "yes")


def _round_size(value: int) -> int:
    return max(SIZE_STEP, int(round(value / SIZE_STEP)) * SIZE_STEP)
