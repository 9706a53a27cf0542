"""Mixed precision for keras_odir: the Keras dtype policy of each ``--precision``."""

from __future__ import annotations

import contextlib

import keras

POLICIES = {"float32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}


@contextlib.contextmanager
def dtype_policy(precision: str):
    """Layers built inside compute in ``precision`` (weights stay float32); the global policy is restored after.

    Under ``mixed_float16``, ``Model.compile`` wraps the optimizer in Keras' ``LossScaleOptimizer``.
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(POLICIES[precision])
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
