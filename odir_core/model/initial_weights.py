"""A dual model's starting weights drawn once, framework-free, so both trainers start from the same numbers.

:func:`initial_state` draws, from the run's seed with numpy, the head's weights and (when the backbone is
not pretrained) the backbone's, each tensor in the distribution torchvision and ``torch.nn`` give it:

- head ``Linear``: ``torch.nn.Linear.reset_parameters``, weight and bias uniform in +-1/sqrt(fan_in);
- backbone convolutions: the family's own rule (ResNet and EfficientNet ``kaiming_normal_(mode="fan_out")``,
  DenseNet ``kaiming_normal_()`` (fan_in), both with the ReLU gain sqrt(2); ConvNeXt ``trunc_normal_(std=0.02)``
  for convolutions and Linears, whose +-2 bounds never bind at that std), biases zero;
- normalisation layers (BatchNorm, LayerNorm): weight 1, bias 0, running mean 0, running variance 1;
  ConvNeXt's ``layer_scale`` 1e-6 (torchvision's default).

The result is a torch-layout state_dict of numpy arrays (``backbone.*`` and ``head.*`` keys, float32);
``torch_odir`` loads it with ``load_state_dict`` and ``keras_odir`` through its weight table. Every tensor
has a random stream of its own, from (seed, its key), so a tensor's values do not depend on which others
are drawn.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence

import numpy as np

from odir_core.errors import InputError
from odir_core.model.model_spec import backbone_spec

BACKBONE_PREFIX, HEAD_PREFIX = "backbone.", "head."
# How each family draws a convolution's weight: ("normal", fan mode) = kaiming normal with gain sqrt(2);
# ("trunc_normal", std).
CONV_INIT = {
    "resnet": ("normal", "fan_out"),
    "efficientnet": ("normal", "fan_out"),
    "densenet": ("normal", "fan_in"),
    "convnext": ("trunc_normal", 0.02),
}
CONVNEXT_LAYER_SCALE = 1e-6


class InitialisationError(InputError):
    """A weight whose starting value no rule covers (names the key)."""


def _rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def _fans(shape: Sequence[int]) -> tuple[int, int]:
    """torch's ``_calculate_fan_in_and_fan_out``: (in, out) channels times the kernel's size."""
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def _head_value(key: str, shape: tuple[int, ...], fan_ins: Mapping[str, int], rng) -> np.ndarray:
    fan_in = fan_ins[key.rsplit(".", 1)[0]]
    bound = 1.0 / math.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape)


def _backbone_value(key: str, shape: tuple[int, ...], family: str, rng) -> np.ndarray:
    name = key.rsplit(".", 1)[-1]
    if name == "num_batches_tracked":
        return np.zeros(shape, np.int64)
    if name in ("bias", "running_mean"):
        return np.zeros(shape)
    if name == "running_var" or (name == "weight" and len(shape) == 1):  # a normalisation layer's scale
        return np.ones(shape)
    if name == "layer_scale" and family == "convnext":
        return np.full(shape, CONVNEXT_LAYER_SCALE)
    if name == "weight" and family in CONV_INIT and (len(shape) == 4 or (len(shape) == 2 and family == "convnext")):
        rule, arg = CONV_INIT[family]
        if rule == "trunc_normal":
            return np.clip(rng.normal(0.0, arg, size=shape), -2.0, 2.0)
        fan = _fans(shape)[0 if arg == "fan_in" else 1]
        return rng.normal(0.0, math.sqrt(2.0 / fan), size=shape)
    raise InitialisationError(f"no initialisation rule for backbone weight {key} {shape} ({family} family)")


def initial_state(shapes: Mapping[str, Sequence[int]], backbone: str, seed: int, *,
                  draw_backbone: bool) -> dict[str, np.ndarray]:
    """The starting weights of a dual model, drawn from ``seed``: torch key -> numpy array (float32).

    ``shapes``: the model's torch-layout keys and their shapes (``backbone.*``, ``head.*``). ``backbone``:
    its registry name (the family's rules). The ``head.*`` keys are always drawn; the ``backbone.*`` keys
    only with ``draw_backbone`` (random, not pretrained, weights), else they are left out of the result.
    """
    family = backbone_spec(backbone).family
    shapes = {key: tuple(int(n) for n in shape) for key, shape in shapes.items()}
    fan_ins = {key.rsplit(".", 1)[0]: shape[1] for key, shape in shapes.items()
               if key.startswith(HEAD_PREFIX) and key.endswith(".weight")}
    state = {}
    for key, shape in shapes.items():
        if key.startswith(HEAD_PREFIX):
            value = _head_value(key, shape, fan_ins, _rng(seed, key))
        elif key.startswith(BACKBONE_PREFIX):
            if not draw_backbone:
                continue
            value = _backbone_value(key[len(BACKBONE_PREFIX):], shape, family, _rng(seed, key))
        else:
            raise InitialisationError(f"{key}: not a dual-model key (backbone.* or head.*)")
        state[key] = value if value.dtype == np.int64 else value.astype(np.float32)
    return state
