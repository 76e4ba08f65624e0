"""One operator, two backends: the same keyword arguments run a command locally or in a pod.

Training and pre-annotation each have a parameter mixin (the fields and checks both backends
share), a local operator (:class:`~airflow_cvat.operators.process.LocalCommand`) and a pod mixin
(:class:`~airflow_cvat.operators.pod.PodCommand`). :func:`keyword_parameters` lets each backend
declare only its own arguments while Airflow still sees them all; :func:`backend_operator` picks
the backend by name. :class:`RunBackendOperator` picks it when the task runs, from a templated
``execution``, so one task follows the backend each DAG run chose (as training's branch does).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from airflow.sdk import BaseOperator

from airflow_cvat.operators.process import LocalCommand

if TYPE_CHECKING:
    from airflow.sdk import Context

Init = TypeVar("Init", bound=Callable[..., None])


def keyword_parameters(*sources: Callable[..., Any]) -> Callable[[Init], Init]:
    """Give an ``__init__`` that passes ``**kwargs`` on the keyword parameters of ``sources`` too.

    Why: Airflow's operator metaclass reads the ``__init__`` signature to fill arguments from a
    DAG's ``default_args`` and to name missing required ones, and :func:`backend_operator` reads it
    to keep only what the local backend takes. The shared parameters are written once (in the
    parameter mixin's ``__init__``) and still appear in every backend's signature.
    """

    def decorate(init: Init) -> Init:
        own = list(inspect.signature(init).parameters.values())
        taken = {p.name for p in own}
        borrowed: dict[str, inspect.Parameter] = {}
        for source in sources:
            for p in inspect.signature(source).parameters.values():
                if p.kind is p.KEYWORD_ONLY and p.name not in taken:
                    borrowed.setdefault(p.name, p)
        positional = [p for p in own if p.kind is p.POSITIONAL_OR_KEYWORD]  # self
        keywords = [p for p in own if p.kind is p.KEYWORD_ONLY]
        rest = [p for p in own if p.kind is p.VAR_KEYWORD]
        parameters = [*positional, *borrowed.values(), *keywords, *rest]
        init.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        return init

    return decorate


def parameter_names(init: Callable[..., Any]) -> set[str]:
    """The named keyword parameters of an ``__init__`` (without ``self`` and ``**kwargs``)."""
    return {p.name for p in inspect.signature(init).parameters.values() if p.kind is p.KEYWORD_ONLY}


LOCAL_ONLY = frozenset(parameter_names(LocalCommand.__init__))
"""Arguments only the local backend takes (``storage_conn_id``, ``python``, ``env``)."""


def backend_operator(
    execution: str, kwargs: dict[str, Any], *, local: type[BaseOperator], kubernetes: Callable[[], type]
) -> BaseOperator:
    """The ``local`` operator or the (lazily built) ``kubernetes()`` one, for ``execution``.

    Backend-only arguments are dropped for the other backend, so a DAG passes one set and switches
    with a single value: the local operator gets its own parameters and BaseOperator's (task_id,
    retries, ...); the pod operator gets everything but :data:`LOCAL_ONLY` (KubernetesPodOperator
    takes the rest: namespace, deferrable, ...).
    """
    if execution == "local":
        accepted = parameter_names(local.__init__) | parameter_names(BaseOperator.__init__)
        return local(**{k: v for k, v in kwargs.items() if k in accepted})
    if execution == "kubernetes":
        return kubernetes()(**{k: v for k, v in kwargs.items() if k not in LOCAL_ONLY})
    raise ValueError(f"execution must be 'local' or 'kubernetes', got {execution!r}")


class RunBackendOperator(BaseOperator):
    """Run ``factory(execution, task_id=..., **arguments)``'s operator, with ``execution`` rendered
    when the task runs (e.g. the run's resolved setting in ``config``'s XCom).

    Why: the choice between a subprocess and a pod belongs to the DAG run (the trigger form's
    "Where training runs"), not to DAG parse time; and a per-run choice must not change the task
    ids that downstream tasks and emails read. The inner operator is built from ``arguments``
    already rendered here (natively when the DAG renders natively), so its own fields are not
    rendered again; it runs inside this task (a pod backend is not deferrable here).

    :param execution: ``local`` or ``kubernetes`` (templated).
    :param factory: e.g. :func:`airflow_cvat.operators.preannotate.preannotate_operator`.
    :param arguments: keyword arguments for ``factory`` (templated; never secrets: they are shown
        as rendered templates).
    """

    template_fields: Sequence[str] = ("execution", "arguments")
    ui_color = "#fdf1e0"

    def __init__(
        self,
        *,
        execution: str,
        factory: Callable[..., BaseOperator],
        arguments: dict[str, Any],
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.execution = execution
        self.factory = factory
        self.arguments = arguments
        self._inner: BaseOperator | None = None

    def execute(self, context: Context) -> Any:
        from airflow.sdk.exceptions import AirflowFailException

        try:
            self._inner = self.factory(str(self.execution), task_id=self.task_id, **self.arguments)
        except ValueError as error:
            raise AirflowFailException(str(error)) from None
        self.log.info("Running on the %s backend (%s)", self.execution, type(self._inner).__name__)
        return self._inner.execute(context)

    def on_kill(self) -> None:
        if self._inner is not None:
            self._inner.on_kill()
