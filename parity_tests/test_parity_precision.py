"""Mixed precision against float32, on every backend: same weights, same inputs.

Stated tolerances, relative to the largest float32 value: logits within 3e-2 (bf16, 8-bit mantissa)
and 5e-3 (fp16, 11-bit); one SGD step's weight change within 5e-2 (bf16) and 1e-2 (fp16). Weights and
logits stay float32 under both policies.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import torch

from keras_odir.losses import WeightedBCEWithLogits
from keras_odir.model import build_dual_model
from keras_odir.optimizers import TorchSGD
from keras_odir.parts import dual_parts
from keras_odir.precision import dtype_policy
from keras_odir.weights import keras_to_torch_state, torch_to_keras_state
from parity_helpers import IS_CHILD, images, main_run_only, nchw

LOGITS_TOL = {"bf16": 3e-2, "fp16": 5e-3}
STEP_TOL = {"bf16": 5e-2, "fp16": 1e-2}


def _pair(precision: str, head: str):
    reference = build_dual_model(head=head, image_size=64, freeze_backbone=True)
    with dtype_policy(precision):
        mixed = build_dual_model(head=head, image_size=64, freeze_backbone=True)
    torch_to_keras_state(mixed, keras_to_torch_state(reference))
    return reference, mixed


def _batch():
    return {"left": images(2, 64, seed=31), "right": images(2, 64, seed=32)}


@pytest.mark.parametrize("precision", list(LOGITS_TOL))
def test_keras_logits_near_float32(record, precision):
    keras.utils.set_random_seed(0)
    reference, mixed = _pair(precision, "v2")
    x = _batch()
    want = keras.ops.convert_to_numpy(reference.predict_on_batch(x))
    got = mixed.predict_on_batch(x)
    assert str(got.dtype) == "float32"
    assert all(v.dtype == "float32" for v in mixed.weights)
    record(f"keras {precision} vs float32 logits (relative)", got, want, LOGITS_TOL[precision], relative=True)


# float16's step differs from bfloat16's by Keras' loss scaling, the same code on every backend
FP16_STEP = main_run_only("loss scaling is the same Keras code on every backend; each backend's float16 forward: "
                          "test_keras_logits_near_float32, its mixed step: the bf16 case")


@pytest.mark.parametrize("precision", [pytest.param(p, marks=FP16_STEP if p == "fp16" else ()) for p in STEP_TOL])
def test_keras_step_near_float32(record, precision):
    keras.utils.set_random_seed(1)
    reference, mixed = _pair(precision, "v0")  # no dropout: both models take the same step
    x, y = _batch(), (np.random.default_rng(3).random((2, 8)) < 0.4).astype("float32")
    changes = []
    for model in (reference, mixed):
        head = dual_parts(model).head.get_layer("head_0")
        before = keras.ops.convert_to_numpy(head.kernel).copy()
        model.compile(optimizer=TorchSGD(learning_rate=0.5, momentum=0.9), loss=WeightedBCEWithLogits())
        model.train_on_batch(x, y)
        changes.append(keras.ops.convert_to_numpy(head.kernel) - before)
    assert np.abs(changes[0]).max() > 1e-4  # the step moved the weights
    record(f"keras {precision} vs float32 one step: head kernel change (relative)", changes[1], changes[0],
           STEP_TOL[precision], relative=True)


@pytest.mark.skipif(IS_CHILD, reason="torch_odir does not depend on the Keras backend")
@pytest.mark.parametrize("precision", list(LOGITS_TOL))
def test_torch_autocast_logits_near_float32(record, precision):
    from torch_odir.model import DualNet
    from torch_odir.train import autocast

    torch.manual_seed(0)
    model = DualNet("resnet50", "v2").eval()
    x = _batch()
    with torch.no_grad():
        want = model(nchw(x["left"]), nchw(x["right"])).numpy()
        with autocast(torch.device("cpu"), precision):
            got = model(nchw(x["left"]), nchw(x["right"])).float().numpy()
    record(f"torch_odir {precision} autocast vs float32 logits (relative)", got, want, LOGITS_TOL[precision],
           relative=True)
