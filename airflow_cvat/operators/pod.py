"""The Kubernetes backend of an operator: a KubernetesPodOperator subclass built on first use.

Import cost: ``KubernetesPodOperator`` pulls in the Kubernetes client (about 1-2 s), and DAG files
are parsed many times a minute. So an operator module keeps its pod-side code in a mixin and
exposes the real class through :func:`pod_operator` (a builder for the module ``__getattr__`` of
:mod:`airflow_cvat.operators.lazy`): a DAG that only runs locally never pays for it. Nothing here
imports the Kubernetes provider or client, or the machine types, at import time.

:class:`PodCommand` is the part both pod mixins share: check everything and set the pod's command,
machine, resources, /dev/shm and credentials Secrets once, before KubernetesPodOperator builds or
runs the pod.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from airflow_cvat.operators.lazy import lazy_attributes

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_cvat.machines import MachineType


def pod_operator_class(
    mixin: type, name: str, module: str, *, template_fields: Sequence[str], ui_color: str
) -> type:
    """``class {name}(mixin, KubernetesPodOperator)``, with ``mixin``'s ``__init__`` signature.

    Built with KubernetesPodOperator's own metaclass, as a class statement would be: it wraps an
    ``__init__`` only when the class defines one, and that wrapper is what applies a DAG's
    ``default_args`` (it reads the signature to know which arguments to fill). Template fields are
    KubernetesPodOperator's plus ``template_fields``, without repeats.
    """
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    def __init__(self: Any, **kwargs: Any) -> None:
        mixin.__init__(self, **kwargs)

    __init__.__signature__ = inspect.signature(mixin.__init__)  # type: ignore[attr-defined]
    __init__.__qualname__ = f"{name}.__init__"
    __init__.__module__ = module
    namespace = {
        "__doc__": mixin.__doc__,
        "__module__": module,
        "__qualname__": name,
        "__init__": __init__,
        "template_fields": tuple(dict.fromkeys((*KubernetesPodOperator.template_fields, *template_fields))),
        "ui_color": ui_color,
    }
    return type(KubernetesPodOperator)(name, (mixin, KubernetesPodOperator), namespace)


def pod_operator(
    module: str, name: str, mixin: type, *, template_fields: Sequence[str], ui_color: str
) -> Callable[[], type]:
    """A builder of the pod operator ``name`` for :func:`airflow_cvat.operators.lazy.lazy_attributes`:
    the class is built on first access, once (it is then stored in the module's globals)."""
    return lambda: pod_operator_class(mixin, name, module, template_fields=template_fields, ui_color=ui_color)


def lazy_pod_operator(
    module_globals: dict[str, Any], name: str, mixin: type, *, template_fields: Sequence[str], ui_color: str
) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) that builds the pod operator ``name`` on first access."""
    builder = pod_operator(
        module_globals["__name__"], name, mixin, template_fields=template_fields, ui_color=ui_color
    )
    return lazy_attributes(module_globals, {name: builder})


def pod_kwargs(kwargs: dict[str, Any], *, image: str, name: str) -> dict[str, Any]:
    """KubernetesPodOperator's arguments: ``image``, a default pod ``name``, and XCom always on.

    Why always on: the command writes its JSON result to /airflow/xcom/return.json, and that
    result is the task's outcome.
    """
    return {"name": name, **kwargs, "image": image, "do_xcom_push": True}


def resolve_machine(machine_type: str | None, num_clones: int) -> MachineType:
    """The machine type, with the Variable read now (task run time), not at DAG parse time."""
    from airflow.sdk import Variable
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_cvat.machines import (
        MACHINE_TYPES_VARIABLE,
        MachineTypeError,
        choose_machine,
        load_machine_types,
    )

    try:
        types = load_machine_types(Variable.get(MACHINE_TYPES_VARIABLE, default=None))
        return choose_machine(types, machine_type or None, num_clones)
    except MachineTypeError as error:
        raise AirflowFailException(str(error)) from None


def pod_resources(machine: MachineType, num_clones: int) -> Any:
    """Requests from the machine type; memory limited; one GPU per clone (none on CPU machines)."""
    from kubernetes.client import models as k8s

    from airflow_cvat.machines import GPU_RESOURCE

    limits = {"memory": machine.memory}
    if machine.gpus:
        limits[GPU_RESOURCE] = str(num_clones)
    return k8s.V1ResourceRequirements(requests={"cpu": machine.cpu, "memory": machine.memory}, limits=limits)


def shm_volume(machine: MachineType) -> Any:
    """An in-memory emptyDir for /dev/shm (tf.data workers and NCCL need more than 64 MiB)."""
    from kubernetes.client import models as k8s

    return k8s.V1Volume(
        name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory", size_limit=machine.shm_size)
    )


def env_list(env_vars: Any) -> list[Any]:
    """KubernetesPodOperator keeps env_vars as a list of V1EnvVar (a dict given is converted)."""
    from kubernetes.client import models as k8s

    if not env_vars:
        return []
    if isinstance(env_vars, dict):
        return [k8s.V1EnvVar(name=k, value=str(v)) for k, v in env_vars.items()]
    return list(env_vars)


class PodCommand:
    """Pod preparation shared by the Kubernetes mixins (placed before KubernetesPodOperator).

    A subclass implements :meth:`configure_pod`: check its fields and call :meth:`set_command`.
    That runs once, when the task executes or a pod is built, before the hook or any pod is
    touched, so bad input fails in milliseconds.
    """

    log: Any
    machine_type: str | None
    _pod_ready: bool = False

    def execute(self, context: Context) -> Any:
        self.prepare_pod(context)
        return super().execute(context)  # type: ignore[misc]

    def build_pod_request_obj(self, context: Context | None = None, *, dry_run: bool = False) -> Any:
        self.prepare_pod(context)
        return super().build_pod_request_obj(context, dry_run=dry_run)  # type: ignore[misc]

    def prepare_pod(self, context: Context | None) -> None:
        if self._pod_ready:
            return
        self.configure_pod(context)
        self._pod_ready = True

    def configure_pod(self, context: Context | None) -> None:
        raise NotImplementedError

    def resolve_machine(self, num_clones: int = 1) -> MachineType:
        return resolve_machine(self.machine_type, num_clones)

    def set_command(
        self,
        module: str,
        args: list[str],
        machine: MachineType,
        *,
        num_clones: int,
        secrets: Iterable[str | None],
        env: dict[str, str] | None = None,
    ) -> None:
        """Run ``python -m module args`` on ``machine``, with the named Secrets as envFrom.

        Node selector and tolerations from the machine type come before the operator's own; env
        values are plain (credentials only ever come from the Secrets).
        """
        from kubernetes.client import models as k8s

        self.cmds = ["python", "-m", module]
        self.arguments = args
        if env:
            self.env_vars = [
                *env_list(self.env_vars),
                *(k8s.V1EnvVar(name=k, value=v) for k, v in env.items()),
            ]
        self.node_selector = {**machine.node_selector, **(self.node_selector or {})}
        self.tolerations = [*(k8s.V1Toleration(**t) for t in machine.tolerations), *(self.tolerations or [])]
        self.container_resources = pod_resources(machine, num_clones)
        self.volumes = [*self.volumes, shm_volume(machine)]
        self.volume_mounts = [*self.volume_mounts, k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm")]
        sources = [k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=s)) for s in secrets if s]
        if sources:
            self.env_from = [*(self.env_from or []), *sources]
