"""Weights between torch (torchvision / torch_odir state_dicts) and keras_odir models, both ways.

Keras layer names are torch module names with ``.`` -> ``_``, so the mapping is a table:
conv kernels OIHW <-> HWIO, dense kernels transposed, BatchNorm weight/bias/running stats
<-> gamma/beta/moving stats; ``num_batches_tracked`` is ignored (written as 0 towards torch).

CLI: ``python -m keras_odir.convert SRC DST`` converts a torch_odir ``.pth`` to a
keras_odir ``.keras`` or back, by the files' suffixes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import keras
import numpy as np

from keras_odir.model import build_dual_model

TORCH_SUFFIXES = (".pth", ".pt")

# keras variable attribute per torch parameter suffix, per layer kind
_BN_VARIABLES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}


class WeightConversionError(ValueError):
    """A state_dict does not fit the model: unknown, missing or mis-shaped keys (all listed)."""


def weight_table(model: keras.Model, prefix: str = "") -> dict[str, tuple[keras.Variable, str]]:
    """torch state_dict key -> (Keras variable, transform kind ``conv``/``dense``/``same``), in model order.

    Nested models (the dual model's ``backbone``) contribute their name as a key prefix.
    """
    table: dict[str, tuple[keras.Variable, str]] = {}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            table.update(weight_table(layer, f"{prefix}{layer.name}."))
            continue
        if not layer.weights:
            continue
        key = prefix + layer.name.replace("_", ".")
        if isinstance(layer, keras.layers.Conv2D) and not layer.use_bias:
            table[f"{key}.weight"] = (layer.kernel, "conv")
        elif isinstance(layer, keras.layers.BatchNormalization):
            for torch_name, keras_name in _BN_VARIABLES.items():
                table[f"{key}.{torch_name}"] = (getattr(layer, keras_name), "same")
        elif isinstance(layer, keras.layers.Dense):
            table[f"{key}.weight"] = (layer.kernel, "dense")
            table[f"{key}.bias"] = (layer.bias, "same")
        else:
            raise WeightConversionError(f"Layer {layer.name!r} ({type(layer).__name__}) has no torch counterpart.")
    return table


def _to_keras(value: np.ndarray, kind: str) -> np.ndarray:
    if kind == "conv":
        return value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    return value.T if kind == "dense" else value


def _to_torch(value: np.ndarray, kind: str) -> np.ndarray:
    if kind == "conv":
        return value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    return value.T if kind == "dense" else value


def _numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def torch_to_keras_state(model: keras.Model, state_dict: Mapping, *, source: str = "state_dict") -> keras.Model:
    """Load a torch state_dict (torch tensors or arrays) into ``model`` and return it.

    ``model`` is a keras_odir backbone (torchvision resnet50 keys, no ``fc``) or a dual model
    (torch_odir ``DualResNet50`` keys). Nothing is assigned unless every key fits; otherwise one
    ``WeightConversionError`` lists the unknown, missing and mis-shaped keys.
    """
    table = weight_table(model)
    given = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    unknown = [k for k in given if k not in table]
    missing = [k for k in table if k not in given]
    values, misshaped = {}, []
    for key, (variable, kind) in table.items():
        if key in given:
            value = _to_keras(_numpy(given[key]), kind)
            if tuple(value.shape) != tuple(variable.shape):
                misshaped.append(f"{key}: {tuple(_numpy(given[key]).shape)} does not fit "
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


def load_imagenet_state_dict(path: str | os.PathLike | None = None, *, download: bool = True) -> dict:
    """torchvision's ImageNet ResNet50 state_dict; see ``torch_odir.model.load_imagenet_state_dict``."""
    from torch_odir.model import load_imagenet_state_dict as load

    return load(path, download=download)


def load_imagenet_weights(backbone: keras.Model, path: str | os.PathLike | None = None, *,
                          download: bool = True) -> keras.Model:
    """Load torchvision's ImageNet weights (``fc`` dropped) into a keras_odir ResNet50 backbone."""
    state = load_imagenet_state_dict(path, download=download)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    return torch_to_keras_state(backbone, state, source="ImageNet checkpoint")


def _torch_state_from_file(path: Path) -> dict:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model_state_dict", "state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping):
        raise WeightConversionError(f"{path} holds no state_dict (found {type(state).__name__}).")
    return dict(state)


def _atomic_target(dst: Path):
    return tempfile.NamedTemporaryFile(dir=dst.parent, prefix=f".{dst.stem}.", suffix=dst.suffix, delete=False)


def convert_file(src: str | os.PathLike, dst: str | os.PathLike, *, head: str | None = None,
                 freeze_backbone: bool = False, image_size: int | None = None, force: bool = False) -> Path:
    """Convert a torch_odir ``.pth`` into a keras_odir ``.keras`` or back; returns ``dst``."""
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"{src} does not exist.")
    if dst.exists() and not force:
        raise FileExistsError(f"{dst} exists; choose another name or pass --force to overwrite it.")
    directions = {(s, ".keras") for s in TORCH_SUFFIXES} | {(".keras", s) for s in TORCH_SUFFIXES}
    if (src.suffix, dst.suffix) not in directions:
        raise ValueError(f"Convert between .pth/.pt and .keras; got {src.name} -> {dst.name}.")
    dst.parent.mkdir(parents=True, exist_ok=True)
    with _atomic_target(dst) as tmp:
        tmp_path = Path(tmp.name)
    try:
        if dst.suffix == ".keras":
            from torch_odir.model import infer_head

            state = _torch_state_from_file(src)
            found = infer_head(state)
            if head is not None and head != found:
                raise WeightConversionError(f"{src} holds head {found}, not the requested {head}.")
            model = build_dual_model(found, freeze_backbone=freeze_backbone, image_size=image_size)
            torch_to_keras_state(model, state, source=str(src))
            model.save(tmp_path)
        else:
            import torch

            model = keras.saving.load_model(src)
            torch.save(keras_to_torch_state(model), tmp_path)
        os.replace(tmp_path, dst)
    finally:
        tmp_path.unlink(missing_ok=True)
    return dst


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m keras_odir.convert",
        description="Convert a dual ResNet50 between a torch_odir state_dict (.pth/.pt) and a "
                    "keras_odir model (.keras), in the direction given by the file suffixes.")
    parser.add_argument("src", type=Path, help="input file: a torch_odir .pth/.pt or a keras_odir .keras")
    parser.add_argument("dst", type=Path, help="output file: .keras when SRC is .pth/.pt, .pth/.pt when SRC is .keras")
    parser.add_argument("--head", choices=("v0", "v1", "v2"),
                        help="torch -> keras: fail unless the checkpoint holds this head (default: detected)")
    parser.add_argument("--freeze-backbone", action="store_true",
                        help="torch -> keras: build the Keras model with a frozen backbone (inference-mode BatchNorm)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="torch -> keras: fix the Keras input size to N x N (default: any size)")
    parser.add_argument("--force", action="store_true", help="overwrite DST when it exists")
    args = parser.parse_args(argv)
    try:
        out = convert_file(args.src, args.dst, head=args.head, freeze_backbone=args.freeze_backbone,
                           image_size=args.image_size, force=args.force)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
