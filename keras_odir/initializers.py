"""Keras' random initialisers, drawn on the host with NumPy: the layers' initial values without a compiled program.

On the jax backend Keras draws every initial weight with a jitted random program, one XLA compilation per weight
shape (about 0.24 s each on a CPU: 13 of the 17 s it took to load a dual ResNet-18, or to build one before training),
while every model built here is overwritten right after (by the trainers' torch-exact initial weights, by a
checkpoint, or by the saved file's weights). These subclasses draw the same distributions with NumPy's generator
and hand the backend one array, on every backend. Seeds behave as Keras' do: an initialiser holds one integer seed,
drawn from Python's ``random`` when none is given (``keras.utils.set_random_seed`` seeds it), so a call draws the
same values for the same shape; a ``keras.random.SeedGenerator`` seed is left to Keras' own draw.
"""

from __future__ import annotations

import math

import keras
import numpy as np


def _generator(seed) -> np.random.Generator | None:
    """NumPy's generator for an integer seed; None for a SeedGenerator (left to Keras)."""
    return None if isinstance(seed, keras.random.SeedGenerator) else np.random.default_rng(seed)


def _tensor(values: np.ndarray, dtype):
    return keras.ops.convert_to_tensor(values, dtype=keras.backend.standardize_dtype(dtype or "float32"))


def _fans(shape) -> tuple[float, float]:
    """(fan_in, fan_out) of a kernel of ``shape``, as Keras counts them (receptive field x in / out channels)."""
    if len(shape) == 0:
        return 1.0, 1.0
    if len(shape) == 1:
        return float(shape[0]), float(shape[0])
    receptive = math.prod(shape[:-2])
    return float(shape[-2] * receptive), float(shape[-1] * receptive)


class _HostDraw:
    """``__call__`` of the initialisers below: ``_draw`` with NumPy's generator, or Keras' own draw where
    ``_draw`` has none (a SeedGenerator seed, a distribution not drawn here)."""

    def __call__(self, shape, dtype=None):
        rng = _generator(self.seed)
        values = None if rng is None else self._draw(rng, tuple(shape))
        return super().__call__(shape, dtype) if values is None else _tensor(values, dtype)


@keras.saving.register_keras_serializable(package="keras_odir")
class RandomNormal(_HostDraw, keras.initializers.RandomNormal):
    """``keras.initializers.RandomNormal`` drawn with NumPy."""

    def _draw(self, rng, shape):
        return rng.standard_normal(shape, np.float32) * np.float32(self.stddev) + np.float32(self.mean)


@keras.saving.register_keras_serializable(package="keras_odir")
class RandomUniform(_HostDraw, keras.initializers.RandomUniform):
    """``keras.initializers.RandomUniform`` drawn with NumPy."""

    def _draw(self, rng, shape):
        low, high = np.float32(self.minval), np.float32(self.maxval)
        return low + (high - low) * rng.random(shape, np.float32)


@keras.saving.register_keras_serializable(package="keras_odir")
class VarianceScaling(_HostDraw, keras.initializers.VarianceScaling):
    """``keras.initializers.VarianceScaling`` drawn with NumPy for the ``uniform`` and ``untruncated_normal``
    distributions (``truncated_normal``: Keras' own draw). ``VarianceScaling(1.0, "fan_avg", "uniform")`` is
    Glorot's uniform."""

    def _draw(self, rng, shape):
        if self.distribution == "truncated_normal":
            return None
        fan_in, fan_out = _fans(shape)
        fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2.0}[self.mode]
        scale = self.scale / max(1.0, fan)
        if self.distribution == "untruncated_normal":
            return rng.standard_normal(shape, np.float32) * np.float32(math.sqrt(scale))
        limit = np.float32(math.sqrt(3.0 * scale))
        return limit * (2.0 * rng.random(shape, np.float32) - 1.0)
