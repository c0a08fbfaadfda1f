"""Fit a process to its work: TensorFlow to the share of the machine a trial was given (CPU
threads and GPU memory), Python's garbage collector to the heap the imports left, and a
reused worker's TensorFlow back to a clean state before each trial."""

from __future__ import annotations

import functools
import gc
import math
import os
import subprocess

# What a process holds on a GPU outside its framework's allocator (the CUDA context, cuBLAS and
# cuDNN): 0.7 GB for PyTorch on an H100 (README, "On a GPU"). Capping every trial at its share
# of the whole GPU would leave the last trial placed on a full GPU that much short.
GPU_CONTEXT_MB = 1024
MIN_GPU_MEMORY_MB = 256


@functools.cache
def freeze_imports() -> None:
    """Once per process, put everything alive now (chiefly the modules TensorFlow, Keras and
    Ray imported: millions of objects) out of reach of the cyclic garbage collector, which
    otherwise walks it all on each full collection: 0.3 s per trial, 0.2 s of a first
    decode. Not collected first, which would cost as much; what is frozen stays."""
    gc.freeze()


def cpu_threads(cpus: float) -> int:
    """TensorFlow intra-op threads for a trial holding `cpus` CPUs (at least one)."""
    return max(1, math.floor(cpus))


def gpu_memory_limit_mb(share: float, total_mb: int) -> int | None:
    """Memory cap for a trial holding `share` of a GPU with `total_mb`: None for a whole GPU
    or more (no cap), else its share less its process's context, so trials placed together
    fit and cannot starve each other."""
    if share <= 0 or share >= 1:
        return None
    return max(MIN_GPU_MEMORY_MB, int(total_mb * share) - GPU_CONTEXT_MB)


def gpu_total_mb() -> int | None:
    """The first GPU's memory as nvidia-smi reports it (None without one)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total",
                              "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, check=True, timeout=30).stdout
        return int(out.split()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def fresh_session() -> None:
    """Start a trial clean in a process that may have run others (a reused worker): Keras'
    session cleared, and the gradient functions TensorFlow registered for earlier trials'
    graphs dropped. Keras sums a training step's gradients over replicas (one here) with an
    all-reduce whose gradient is a `tf.custom_gradient`: each time a step is traced, it
    registers a function in TensorFlow's global gradient registry that holds the step's
    whole graph, 2 to 5 MB a trial for the life of the worker, which `clear_session` does not
    free (tensorflow/tensorflow#97697; keras-team/tf-keras#898 proposes the same purge in
    `clear_session`). Only graphs traced before this trial are dropped; nothing
    differentiates them again."""
    import keras
    from tensorflow.python.framework import ops

    keras.backend.clear_session()
    registry = ops._gradient_registry._registry
    for name in [name for name in registry if name.startswith("CustomGradient-")]:
        del registry[name]


def configure_tensorflow(cpus: float, gpu_share: float) -> None:
    """Size thread pools and cap GPU memory. Call before the trial's first TensorFlow op; in a
    process that already ran TensorFlow (a reused worker) the first settings stay."""
    # imported here: the functions above serve where TensorFlow is absent (benchmarks.gpu on
    # Keras' JAX backend)
    import tensorflow as tf

    threads = cpu_threads(cpus)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
        gpus = tf.config.list_physical_devices("GPU")
        total = gpu_total_mb() if gpus else None
        limit = gpu_memory_limit_mb(gpu_share, total) if total else None
        for gpu in gpus:
            if limit is None:
                tf.config.experimental.set_memory_growth(gpu, True)
            else:
                tf.config.set_logical_device_configuration(
                    gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=limit)])
    except RuntimeError:
        pass  # TensorFlow was initialised earlier in this process; its settings stand.
