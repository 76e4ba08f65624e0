"""Names an operator module offers without importing what they need when the module is imported.

Why: the DAG file imports the operator modules on every parse (many times a minute), and an
operator's class definition needs little (BaseOperator, its fields); what only ``execute`` needs
(hooks, storage, the catalogue, the Kubernetes provider, dataclasses of the run's plan) loads
when a task runs. Names kept for callers (``from airflow_cvat.operators.convert import decide``)
are resolved on first access through a module ``__getattr__`` (PEP 562) and then stored in the
module's globals, so each is looked up once and pickling by module and name finds it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(
    module_globals: dict[str, Any], names: Mapping[str, str | Callable[[], Any]]
) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``names``: each maps to a module path (the attribute of the
    same name there, or ``"module:attribute"``), or to a function building the value."""
    module = module_globals["__name__"]

    def __getattr__(attribute: str) -> Any:
        target = names.get(attribute)
        if target is None:
            raise AttributeError(f"module {module!r} has no attribute {attribute!r}")
        if attribute not in module_globals:
            if callable(target):
                value = target()
            else:
                path, _, name = target.partition(":")
                value = getattr(importlib.import_module(path), name or attribute)
            module_globals[attribute] = value
        return module_globals[attribute]

    return __getattr__
