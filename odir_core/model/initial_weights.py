"""A dual model's starting weights drawn once, framework-free, so both trainers start from the same numbers.

:func:`initial_state` draws, from the run's seed with numpy, the head's weights and (when the backbone is
not pretrained) the backbone's, each tensor in the distribution torchvision and ``torch.nn`` give it:

- head ``Linear``: ``torch.nn.Linear.reset_parameters``, weight and bias uniform in +-1/sqrt(fan_in);
- an ``MLDecoder`` head (``torch_odir.mldecoder``'s own initialisation): its Linears (``embed``, ``ff1``, ``ff2``,
  ``attn.out_proj`` weight) as above; ``nn.MultiheadAttention``'s packed ``in_proj_weight`` Xavier-uniform,
  its biases zero; LayerNorms weight 1, bias 0; ``query_embed`` standard normal (``nn.Embedding``'s),
  ``eye_embed`` normal with std 0.02; ``group_weight`` Xavier-normal, ``group_bias`` zero;
- every backbone tensor its family has a rule for (``initial_weight`` of its module in
  ``odir_core.model.families``, given the torchvision key): convolutions, ConvNeXt's Linears and ``layer_scale``,
  ViT's tokens, embeddings, attention and MLP (its MLP biases are not zero);
- the other backbone biases zero; normalisation layers (BatchNorm, LayerNorm): weight 1, bias 0, running mean 0,
  running variance 1.

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
from odir_core.model.backbone import BackboneSpec
from odir_core.model.families import FAMILIES

BACKBONE_PREFIX, HEAD_PREFIX = "backbone.", "head."


class InitialisationError(InputError):
    """A weight whose starting value no rule covers (names the key)."""


def _rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def _xavier_bound(shape: tuple[int, ...]) -> float:
    """sqrt(6 / (fan_in + fan_out)) of torch's ``xavier_uniform_``; fan_in dim 1, fan_out dim 0, times the rest."""
    rest = math.prod(shape[2:])
    return math.sqrt(6.0 / ((shape[0] + shape[1]) * rest))


# the MLDecoder head's tensors that are not a Linear's (its name under head.<i>.) -> their rule
_DECODER_RULES = {
    "eye_embed": lambda shape, rng: rng.normal(0.0, 0.02, size=shape),
    "query_embed": lambda shape, rng: rng.normal(0.0, 1.0, size=shape),
    "attn.in_proj_weight": lambda shape, rng: rng.uniform(-_xavier_bound(shape), _xavier_bound(shape), size=shape),
    "group_weight": lambda shape, rng: rng.normal(0.0, _xavier_bound(shape) / math.sqrt(3.0), size=shape),
    **{name: lambda shape, rng: np.zeros(shape)
       for name in ("attn.in_proj_bias", "attn.out_proj.bias", "norm1.bias", "norm2.bias", "group_bias")},
    **{name: lambda shape, rng: np.ones(shape) for name in ("norm1.weight", "norm2.weight")},
}


def _head_value(key: str, shape: tuple[int, ...], fan_ins: Mapping[str, int], rng) -> np.ndarray:
    rule = _DECODER_RULES.get(key.split(".", 2)[-1])
    if rule is not None:
        return rule(shape, rng)
    fan_in = fan_ins.get(key.rsplit(".", 1)[0])
    if fan_in is None:
        raise InitialisationError(f"no initialisation rule for head weight {key} {shape}")
    bound = 1.0 / math.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape)


def _backbone_value(key: str, shape: tuple[int, ...], spec: BackboneSpec, rng) -> np.ndarray:
    name = key.rsplit(".", 1)[-1]
    if name == "num_batches_tracked":
        return np.zeros(shape, np.int64)
    value = FAMILIES[spec.family].initial_weight(key, shape, rng, spec)  # the family's rule first (ViT's MLP biases)
    if value is not None:
        return value
    if name in ("bias", "running_mean"):
        return np.zeros(shape)
    if name == "running_var" or (name == "weight" and len(shape) == 1):  # a normalisation layer's scale
        return np.ones(shape)
    raise InitialisationError(f"no initialisation rule for backbone weight {key} {shape} ({spec.family} family)")


def initial_state(shapes: Mapping[str, Sequence[int]], backbone: BackboneSpec, seed: int, *,
                  draw_backbone: bool) -> dict[str, np.ndarray]:
    """The starting weights of a dual model, drawn from ``seed``: torch key -> numpy array (float32).

    ``shapes``: the model's torch-layout keys and their shapes (``backbone.*``, ``head.*``). ``backbone``:
    its spec (its family's rules). The ``head.*`` keys are always drawn; the ``backbone.*`` keys
    only with ``draw_backbone`` (random, not pretrained, weights), else they are left out of the result.
    """
    shapes = {key: tuple(int(n) for n in shape) for key, shape in shapes.items()}
    fan_ins = {key.rsplit(".", 1)[0]: shape[1] for key, shape in shapes.items()
               if key.startswith(HEAD_PREFIX) and key.endswith(".weight") and len(shape) == 2}
    state = {}
    for key, shape in shapes.items():
        if key.startswith(HEAD_PREFIX):
            value = _head_value(key, shape, fan_ins, _rng(seed, key))
        elif key.startswith(BACKBONE_PREFIX):
            if not draw_backbone:
                continue
            value = _backbone_value(key[len(BACKBONE_PREFIX):], shape, backbone, _rng(seed, key))
        else:
            raise InitialisationError(f"{key}: not a dual-model key (backbone.* or head.*)")
        state[key] = value if value.dtype == np.int64 else value.astype(np.float32)
    return state
