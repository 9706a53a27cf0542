"""Helpers of the keras_odir <-> torch parity suite: recording diffs, calibrated torch models, inputs."""

from __future__ import annotations

import contextlib
import copy
import os

import numpy as np
import pytest

import keras_odir  # noqa: F401  (sets KERAS_BACKEND=torch when unset, before keras loads)
import keras
import torch
import torchvision

TOLERANCE = 1e-4
RESULTS: list[tuple[str, float, float, float, str]] = []  # (case, max |diff|, max |ref|, tolerance, note)
CHILD_REPORTS: list[str] = []  # parity tables of the other backends, from test_parity_backends.py
SUMMARY_TITLE = "parity: worst |keras - torch| per case"


class Recorder:
    """Compares arrays, records the worst |diff| for the summary, prints it and asserts the tolerance.

    ``floor``: optional callable giving torch's own float32 error on the same case (its float32
    output against float64); when the diff exceeds ``tol`` it is allowed up to twice that
    floor, since no float32 implementation can be closer to torch than torch is to exact.
    """

    def __call__(self, case: str, got, want, tol: float = TOLERANCE, *, relative: bool = False,
                 floor=None) -> float:
        got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
        assert got.shape == want.shape, f"{case}: shape {got.shape} != {want.shape}"
        diff = np.abs(got - want)
        if relative:  # per tensor, relative to the tensor's largest magnitude
            diff = diff / max(float(np.abs(want).max()), 1e-12)
        worst, scale = float(diff.max()), float(np.abs(want).max())
        note = ""
        if worst > tol and floor is not None:
            torch_error = float(floor())
            tol = max(tol, 2 * torch_error)
            note = f", torch f32 vs f64 {torch_error:.3e}"
        RESULTS.append((f"[{keras.backend.backend()}] {case}", worst, scale, tol, note))
        print(f"parity {keras.backend.backend():10s} {case}: max|diff| {worst:.3e} (max|ref| {scale:.3g}{note})")
        assert worst <= tol, f"{case}: max |diff| {worst:.3e} > {tol:g}{note}"
        return worst


def float64_error(torch_model, inputs, reference, training: bool):
    """A callable giving max |torch float32 output - torch float64 output| for ``inputs`` (NCHW tensors)."""

    def error() -> float:
        exact = copy.deepcopy(torch_model).double().train(training)
        with torch.no_grad():
            out = exact(*(t.double() for t in inputs)).numpy()
        return float(np.abs(np.asarray(reference, dtype=np.float64) - out).max())

    return error


@contextlib.contextmanager
def keras_float64():
    """Keras in float64: ``floatx`` and the dtype policy float64 (models, optimizers and losses made
    inside compute and keep their weights in float64), jax's 64-bit mode on the jax backend, and
    Keras' type promotion keeping float64. Keras maps every float64 result of ``result_type`` to
    float32 on the torch and jax backends (JAX's default with 64-bit mode off), so its own ``ops.mean``
    (GlobalAveragePooling2D) and, on torch, ``ops.matmul`` (Dense) would compute in float32; inside,
    float64 promotes to float64 as on the tensorflow backend. Everything is restored on exit."""
    from keras.src.backend.common import dtypes

    backend = keras.backend.backend()
    previous = keras.config.floatx(), keras.config.dtype_policy(), dtypes.BIT64_TO_BIT32_DTYPE["float64"]
    if backend == "jax":
        import jax

        previous_x64 = jax.config.jax_enable_x64
        jax.config.update("jax_enable_x64", True)
    dtypes.BIT64_TO_BIT32_DTYPE["float64"] = "float64"
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        yield
    finally:
        floatx, policy, dtypes.BIT64_TO_BIT32_DTYPE["float64"] = previous
        keras.config.set_floatx(floatx)
        keras.config.set_dtype_policy(policy)
        if backend == "jax":
            jax.config.update("jax_enable_x64", previous_x64)


def calibrated_resnet50(seed: int) -> torch.nn.Module:
    """torchvision resnet50 (fc = Identity) with trained-looking BatchNorm: random affine, running stats
    set from one batch, so inference-mode activations stay O(1) like a trained network's."""
    return calibrated_backbone("resnet50", seed)


def calibrated_backbone(name: str, seed: int) -> torch.nn.Module:
    """torchvision's ``name`` as torch_odir builds it (classifier = Identity), BatchNorm calibrated as in
    :func:`calibrated_resnet50`."""
    from torch_odir.model import build_backbone

    torch.manual_seed(seed)
    model = build_backbone(name)
    batchnorms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in batchnorms:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0.0, 0.1)
            bn.momentum = None  # cumulative average: one batch sets the running stats to its own
            bn.reset_running_stats()
        model.train()
        model(torch.randn(8, 3, 96, 96))
    for bn in batchnorms:
        bn.momentum = 0.1
        bn.num_batches_tracked.zero_()
    return model.eval()


def trained_looking_vit(model: torch.nn.Module, token_keys, seed: int = 0) -> torch.nn.Module:
    """A ViT's random weights in which every parameter matters: norm scales near 1, biases O(0.1) (torchvision
    draws the MLP's at std 1e-6), the class token and position embeddings (``token_keys``) O(0.5); the projections
    keep their draws."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for key, param in model.named_parameters():
            if param.ndim == 1 and key.endswith("weight"):
                param.uniform_(0.5, 1.5)
            elif param.ndim == 1:
                param.normal_(0.0, 0.1)
            elif key in token_keys:
                param.normal_(0.0, 0.5)
    return model


def images(batch: int, size: int, seed: int, channels_first: bool = False) -> np.ndarray:
    """ImageNet-normalised-looking float32 images, NHWC (or NCHW)."""
    shape = (batch, 3, size, size) if channels_first else (batch, size, size, 3)
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def model_pair(backbone: str, head: str, seed: int, freeze: bool = False):
    """(torch DualNet, Keras dual model) of ``backbone`` and ``head`` with the same weights: torch's initial head
    (seeded), a calibrated backbone; dropout off in both."""
    from keras_odir.model import build_dual_model
    from keras_odir.weights import torch_to_keras_state
    from torch_odir.model import DualNet

    torch.manual_seed(seed)
    torch_model = DualNet(backbone, head, freeze_backbone=freeze)
    torch_model.backbone.load_state_dict(calibrated_backbone(backbone, seed).state_dict())
    keras_model = torch_to_keras_state(build_dual_model(backbone, head, freeze_backbone=freeze),
                                       torch_model.state_dict())
    dropout_off(keras_model, torch_model)
    return torch_model, keras_model


def one_head_sgd_step(torch_model, keras_model) -> tuple[float, float, dict]:
    """One SGD step (lr 0.5, momentum 0.9, unweighted BCE) of both models, backbones frozen, on the same 4 pairs
    of 64 px images; returns (Keras loss, torch loss, torch's head state before the step)."""
    from keras_odir.losses import WeightedBCEWithLogits
    from keras_odir.optimizers import TorchSGD

    left, right = images(4, 64, seed=8), images(4, 64, seed=9)
    labels = (np.random.default_rng(10).random((4, 8)) < 0.3).astype(np.float32)
    before = {k: v.clone() for k, v in torch_model.state_dict().items() if k.startswith("head.")}
    torch_model.train()
    optimizer = torch.optim.SGD([p for p in torch_model.parameters() if p.requires_grad], lr=0.5, momentum=0.9)
    loss = torch.nn.BCEWithLogitsLoss()(torch_model(nchw(left), nchw(right)), torch.from_numpy(labels))
    loss.backward()
    optimizer.step()
    keras_model.compile(optimizer=TorchSGD(learning_rate=0.5, momentum=0.9), loss=WeightedBCEWithLogits(None))
    keras_loss = keras_model.train_on_batch({"left": left, "right": right}, labels)
    return float(keras_loss), float(loss.item()), before


def _nested_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _nested_layers(layer)


def dropout_off(keras_model, torch_model) -> None:
    """Make dropout and stochastic depth the identity in both models, so training mode is deterministic."""
    from keras_odir.layers import StochasticDepth
    from keras_odir.mldecoder import MLDecoder

    for layer in _nested_layers(keras_model):  # the head is a sub-model
        if isinstance(layer, (keras.layers.Dropout, StochasticDepth, MLDecoder)):
            layer.rate = 0.0
    for module in torch_model.modules():
        if isinstance(module, (torch.nn.Dropout, torchvision.ops.StochasticDepth)):
            module.p = 0.0
        elif isinstance(module, torch.nn.MultiheadAttention):  # dropout on its attention weights
            module.dropout = 0.0


def other_backends() -> list[str]:
    return [b for b in ("torch", "jax", "tensorflow") if b != keras.backend.backend()]


IS_CHILD = os.environ.get("KERAS_ODIR_PARITY_CHILD") == "1"


def main_run_only(reason: str):
    """The mark of a check made by the session's own backend and left out of the other backends' re-runs
    (``reason``: why the backend does not change what it checks, or where it is checked on every backend)."""
    return pytest.mark.skipif(IS_CHILD, reason=reason)


def assert_initialised_alike(want: dict, got: dict) -> None:
    """Fresh Keras weights ``got`` (numpy state) drawn as torch's ``want`` (state_dict) was: the same keys, constants
    equal, and random tensors of n >= 1000 values with the same mean and standard deviation within 6 standard
    errors of their difference (std ratio within 6 / sqrt(n): 19% at n = 1000, where a wrong gain or fan is 40%
    or more off)."""
    assert set(got) == set(want)
    for key, value in want.items():
        value, drawn = value.double().numpy(), got[key].astype(np.float64)
        if value.std() == 0:
            np.testing.assert_array_equal(drawn, value, err_msg=key)
        elif value.size >= 1000:
            assert abs(drawn.mean() - value.mean()) <= 6 * np.sqrt(2 / value.size) * value.std(), key
            assert abs(drawn.std() / value.std() - 1) <= 6 / np.sqrt(value.size), key
