"""Devices, distribution strategy and precision: decided once, before any model is built.

Why a module of its own: TensorFlow fixes its logical devices at first use, so splitting a CPU
into replicas (the CI stand-in for several GPUs) and choosing the precision policy must happen
before anything else touches TensorFlow.

``num_clones`` replicas run under ``tf.distribute.MirroredStrategy``:

* with at least ``num_clones`` GPUs, on the first ``num_clones`` of them, in float16 mixed
  precision;
* with no GPU at all, on ``num_clones`` logical CPU devices (slow; for tests and CI);
* with some GPUs but fewer than asked, the run is refused: silently training on fewer GPUs
  than the user pays for is the bug this setting exists to prevent.
"""

from __future__ import annotations

import logging
import os

import tensorflow as tf

log = logging.getLogger(__name__)


class DeviceError(ValueError):
    """Fewer devices than the arguments ask for."""


GRAPH_OPTIMIZER_ENV = "AIRFLOW_CVAT_GRAPH_OPTIMIZER"
"""Set to 0 to switch TensorFlow's graph optimizer (Grappler) off: a CI aid, not for real runs.

Why: the tests train each catalogue model for a few steps, where compiling the graphs costs far
more than running them; without Grappler the Mask R-CNN test run took 211 s instead of 309 s
on 2 CPU cores. Results are the same; long runs are slower without it.
"""


def configure(num_clones: int) -> tuple[tf.distribute.Strategy, bool]:
    """(strategy, uses_gpu) for ``num_clones`` replicas; call before building any model."""
    if os.environ.get(GRAPH_OPTIMIZER_ENV, "1") == "0":
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
        log.info("graph optimizer off (%s=0)", GRAPH_OPTIMIZER_ENV)
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        if len(gpus) < num_clones:
            raise DeviceError(
                f"num_clones={num_clones} but only {len(gpus)} GPU(s) are visible; "
                f"request {num_clones} GPUs for the pod or lower num_clones"
            )
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)
        import tf_keras

        tf_keras.mixed_precision.set_global_policy("mixed_float16")
        devices = [f"/gpu:{i}" for i in range(num_clones)]
        use_gpu = True
    else:
        if num_clones > 1:
            _split_cpu(num_clones)
        devices = [f"/cpu:{i}" for i in range(num_clones)]
        use_gpu = False
    if num_clones == 1:
        strategy = tf.distribute.OneDeviceStrategy(devices[0])
    else:
        # Logical CPUs cannot use NCCL; GPUs can.
        ops = tf.distribute.NcclAllReduce() if use_gpu else tf.distribute.ReductionToOneDevice()
        strategy = tf.distribute.MirroredStrategy(devices, cross_device_ops=ops)
    log.info("replicas: %d on %s", strategy.num_replicas_in_sync, ", ".join(devices))
    return strategy, use_gpu


def _split_cpu(count: int) -> None:
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current and len(current) >= count:
        return
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
