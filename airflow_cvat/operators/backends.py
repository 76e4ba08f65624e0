"""One operator, two backends: the same keyword arguments run a command locally or in a pod.

Training and pre-annotation each have a parameter mixin (the fields and checks both backends
share), a local operator (:class:`~airflow_cvat.operators.process.LocalCommand`) and a pod mixin
(:class:`~airflow_cvat.operators.pod.PodCommand`). :func:`keyword_parameters` lets each backend
declare only its own arguments while Airflow still sees them all; :func:`backend_operator` picks
the backend by name.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from airflow.sdk import BaseOperator

from airflow_cvat.operators.process import LocalCommand

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
