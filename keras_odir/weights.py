"""Weights between torch state_dicts (torchvision, torch_odir, the study's files) and keras_odir models.

Keras layer names are torch module names with ``.`` -> ``_`` (a registered module path that holds ``_`` is
looked up: ``odir_core.model.model_spec.torch_module_paths``), so the mapping is a table:
conv kernels OIHW <-> HWIO, depthwise kernels (C, 1, kh, kw) <-> (kh, kw, C, 1), dense kernels
transposed, BatchNorm weight/bias/running stats <-> gamma/beta/moving stats, LayerNorm weight/bias
<-> gamma/beta; ``num_batches_tracked`` is ignored (written as 0 towards torch). A layer with a
``torch_variables()`` method names its own torch parameters (ConvNeXt's ``layer_scale``), under its module, or
as whole keys where its ``torch_path`` is ``""`` (ViT's ``class_token`` and ``encoder.pos_embedding``).
A dual model's table is ``backbone.`` + its backbone's keys, plus the head's ``head.<i>`` keys.
Files are read with ``torch.load`` alone (never torchvision, which must not be imported into a
process that holds TensorFlow).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from pathlib import Path

import keras
import numpy as np

from keras_odir.parts import dual_parts, is_dual_model
from odir_core.errors import InputError
from odir_core.model.checkpoints import SAFE_GLOBALS, CheckpointError, load_imagenet_backbone_state, read_checkpoint
from odir_core.model.backbone import BackboneSpec
from odir_core.model.model_spec import torch_module_paths

# keras variable attribute per torch BatchNorm parameter
_BN_VARIABLES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}


class WeightConversionError(InputError):
    """A state_dict does not fit the model: unknown, missing or mis-shaped keys (all listed)."""


def _layer_table(model: keras.Model, prefix: str) -> dict[str, tuple[keras.Variable, str]]:
    table: dict[str, tuple[keras.Variable, str]] = {}
    paths = torch_module_paths()
    for layer in model.layers:
        if not layer.weights:
            continue
        key = prefix + paths.get(layer.name, layer.name.replace("_", "."))
        if hasattr(layer, "torch_variables"):
            if getattr(layer, "torch_path", None) == "":  # its torch names are whole keys (ViT's class token)
                key = prefix.removesuffix(".")
            for name, entry in layer.torch_variables().items():
                table[f"{key}.{name}" if key else name] = entry
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
            table[f"{key}.weight"] = (layer.kernel, "depthwise" if depthwise else "conv")
            if layer.use_bias:
                table[f"{key}.bias"] = (layer.bias, "same")
        elif isinstance(layer, keras.layers.BatchNormalization):
            for torch_name, keras_name in _BN_VARIABLES.items():
                table[f"{key}.{torch_name}"] = (getattr(layer, keras_name), "same")
        elif isinstance(layer, keras.layers.Dense):
            table[f"{key}.weight"] = (layer.kernel, "dense")
            table[f"{key}.bias"] = (layer.bias, "same")
        elif isinstance(layer, keras.layers.LayerNormalization):
            table[f"{key}.weight"] = (layer.gamma, "same")
            table[f"{key}.bias"] = (layer.beta, "same")
        else:
            raise WeightConversionError(f"Layer {layer.name!r} ({type(layer).__name__}) has no torch counterpart.")
    return table


def weight_table(model: keras.Model) -> dict[str, tuple[keras.Variable, str]]:
    """torch state_dict key -> (Keras variable, transform kind), in model order; kinds: ``conv``,
    ``depthwise``, ``dense``, ``channel`` (torch (C, 1, 1), Keras (C,)) and ``same``.

    ``model``: a dual model (keys ``backbone.*`` and ``head.*``) or a bare backbone (torchvision keys).
    """
    if is_dual_model(model):
        parts = dual_parts(model)
        return {**_layer_table(parts.backbone, "backbone."), **_layer_table(parts.head, "")}
    return _layer_table(model, "")


def _to_keras(value: np.ndarray, kind: str) -> np.ndarray:
    if kind == "conv":
        return value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if kind == "depthwise":
        return value.transpose(2, 3, 0, 1)  # (C, 1, kh, kw) -> (kh, kw, C, 1)
    if kind == "channel":
        return value.reshape(-1) if value.shape[1:] == (1, 1) else value  # (C, 1, 1) -> (C,)
    return value.T if kind == "dense" else value


def _to_torch(value: np.ndarray, kind: str) -> np.ndarray:
    if kind == "conv":
        return value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    if kind == "depthwise":
        return value.transpose(2, 3, 0, 1)  # (kh, kw, C, 1) -> (C, 1, kh, kw)
    if kind == "channel":
        return value.reshape(-1, 1, 1)
    return value.T if kind == "dense" else value


def to_numpy(value) -> np.ndarray:
    """A torch tensor or array-like as a numpy array."""
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def torch_to_keras_state(model: keras.Model, state_dict: Mapping, *, source: str = "state_dict") -> keras.Model:
    """Load a torch state_dict (torch tensors or arrays) into ``model`` and return it.

    ``model`` is a keras_odir backbone (torchvision keys without the classifier) or a dual model
    (torch_odir keys). Nothing is assigned unless every key fits; otherwise one
    ``WeightConversionError`` lists the unknown, missing and mis-shaped keys.
    """
    table = weight_table(model)
    given = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    unknown = [k for k in given if k not in table]
    missing = [k for k in table if k not in given]
    values, misshaped = {}, []
    for key, (variable, kind) in table.items():
        if key in given:
            value = _to_keras(to_numpy(given[key]), kind)
            if tuple(value.shape) != tuple(variable.shape):
                misshaped.append(f"{key}: {tuple(to_numpy(given[key]).shape)} does not fit "
                                 f"{variable.path} {tuple(variable.shape)}")
            values[key] = value
    problems = [f"{label} ({len(keys)}): {', '.join(keys)}"
                for label, keys in (("unknown keys", unknown), ("missing keys", missing),
                                    ("mis-shaped keys", misshaped)) if keys]
    if problems:
        raise WeightConversionError(f"{source} does not fit Keras model {model.name!r}: " + "; ".join(problems))
    for key, (variable, _) in table.items():
        variable.assign(values[key].astype(variable.dtype))
    return model


def keras_to_numpy_state(model: keras.Model) -> dict[str, np.ndarray]:
    """The model's weights as a torch-layout state_dict of numpy arrays (``num_batches_tracked`` = 0)."""
    state = {}
    for key, (variable, kind) in weight_table(model).items():
        state[key] = np.ascontiguousarray(_to_torch(keras.ops.convert_to_numpy(variable), kind))
        if key.endswith(".running_var"):
            state[key[: -len("running_var")] + "num_batches_tracked"] = np.array(0, dtype=np.int64)
    return state


def keras_to_torch_state(model: keras.Model) -> dict:
    """The model's weights as a torch state_dict (torch tensors) for torchvision / torch_odir."""
    import torch

    return {k: torch.from_numpy(v) for k, v in keras_to_numpy_state(model).items()}


def torch_load(path):
    """What a torch checkpoint file holds (tensors on the CPU, no arbitrary objects): ``torch.load``."""
    import torch

    with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
        return torch.load(path, map_location="cpu", weights_only=True)


def read_torch_state(path: str | os.PathLike) -> dict:
    """The state_dict in a ``.pth``/``.pt`` file, unwrapped (see ``odir_core.model.checkpoints``)."""
    return read_checkpoint(path, torch_load)


def load_imagenet_weights(backbone: keras.Model, spec: BackboneSpec, path: str | os.PathLike | None = None, *,
                          download: bool = True) -> keras.Model:
    """Load torchvision's ImageNet weights of ``spec`` (classifier dropped) into a keras_odir backbone.

    ``path``: the checkpoint file or a folder holding it; None: the torch hub folder.
    """
    state = load_imagenet_backbone_state(path, spec, torch_load, download=download)
    return torch_to_keras_state(backbone, state, source=f"ImageNet {spec.name} checkpoint")


def read_keras_model(path: str | os.PathLike, *, compile: bool = False) -> keras.Model:
    """The model in a ``.keras`` file, or one ``CheckpointError`` naming the file (missing, not a zip
    archive, or not a model that ``import keras_odir`` can rebuild)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a .keras model (a .keras file is a zip archive); it is damaged or "
                              "another format: pass best.keras or last.keras of a keras_odir run")
    try:
        return keras.saving.load_model(path, compile=compile)
    except Exception as error:  # Keras raises zip, h5, value and type errors alike for a damaged archive
        raise CheckpointError(f"{path}: a damaged or foreign .keras model ({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else ''}); save it again") from None
