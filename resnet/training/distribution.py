"""Distribution strategies, chosen by name in gin.

Batch sizes in this project are global: `Trainer.batch_size = 256` on 8 replicas gives each
replica 32 images per step, and the learning rate is that of a 256-image step.
"""

from __future__ import annotations

import os

import tensorflow as tf

from resnet.validation import check_choice, check_int

STRATEGIES = ("default", "mirrored", "multi_worker_mirrored")


def split_cpu(logical_cpus: int) -> None:
    """Splits the host CPU into `logical_cpus` logical devices (to run `mirrored` on a CPU-only
    machine, e.g. in tests). Must run before TensorFlow initializes its devices."""
    check_int("Trainer.logical_cpus", logical_cpus)
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == logical_cpus:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus)
    except RuntimeError as error:
        raise ValueError(
            f"`Trainer.logical_cpus`={logical_cpus} must be set before TensorFlow initializes its "
            "devices (start a new process)."
        ) from error


_MULTI_WORKER: list[tf.distribute.Strategy] = []


def make_strategy(name: str) -> tf.distribute.Strategy:
    """Returns the strategy named `name`.

    * "default": one device.
    * "mirrored": synchronous data parallelism over all local GPUs, or over the logical CPUs
      when there is no GPU.
    * "multi_worker_mirrored": synchronous data parallelism over the workers that the
      `TF_CONFIG` environment variable describes (each worker runs the same command). It
      must be created before any other TensorFlow op runs; it is created once per process.
    """
    check_choice("Trainer.strategy", name, STRATEGIES)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if "TF_CONFIG" not in os.environ:
        raise ValueError(
            "`Trainer.strategy`='multi_worker_mirrored' needs the TF_CONFIG environment variable "
            "describing the cluster and this worker's task."
        )
    if not _MULTI_WORKER:
        _MULTI_WORKER.append(tf.distribute.MultiWorkerMirroredStrategy())
    return _MULTI_WORKER[0]


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes checkpoints, metrics and logs: the chief, or worker 0 of a
    cluster without a chief, or the only process."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief
