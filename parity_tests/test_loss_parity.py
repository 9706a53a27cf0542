"""Loss parity: keras_odir's training losses against torch_odir's, the loss each config picks on either side
(``keras_odir.losses.training_loss``, ``torch_odir.losses.training_loss``): BCE, focal and asymmetric, unweighted and
class-weighted, in float32 on the active Keras backend (re-run on the others by test_parity_backends.py).

Checked: the loss value and its gradient with respect to the logits, within 1e-6 of torch_odir's (the gradient
relative to its largest magnitude, the value absolute; the value is O(1) to O(10)), on random logits and a row of
saturated ones (+-30, +-80, +-100), where the gradient must also be finite.
"""

from __future__ import annotations

import keras_odir  # noqa: F401  (sets KERAS_BACKEND=torch when unset, before keras loads)
import keras
import numpy as np
import pytest
import torch

from keras_odir.losses import training_loss as keras_training_loss
from odir_core.training.config import TrainConfig
from torch_odir.losses import training_loss as torch_training_loss

LOSS_TOL = 1e-6
CONFIGS = {
    "bce": TrainConfig(loss="bce"),
    "focal": TrainConfig(loss="focal"),
    "focal gamma 0.5 no alpha": TrainConfig(loss="focal", focal_gamma=0.5, focal_alpha=-1.0),
    "asl": TrainConfig(loss="asl"),
    "asl gamma_pos 1 clip 0.2": TrainConfig(loss="asl", asl_gamma_neg=2.5, asl_gamma_pos=1.0, asl_clip=0.2),
    "asl no clip": TrainConfig(loss="asl", asl_gamma_neg=0.5, asl_gamma_pos=0.0, asl_clip=0.0),
}
# negatives/positives of the ODIR-5K training labels, about
POS_WEIGHT = np.array([2.07, 2.10, 15.3, 15.5, 20.3, 33.0, 19.1, 2.57], np.float32)
SATURATED = [30.0, -30.0, 80.0, -80.0, 100.0, -100.0, 2.944439, 1e-3]  # sigmoid(2.944439) = 0.95: the margin's edge


def batch(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(8, 8)) * 4).astype(np.float32)
    targets = (rng.random((8, 8)) < 0.3).astype(np.float32)
    logits[0], logits[1] = SATURATED, SATURATED[::-1]
    targets[0], targets[1] = [1, 0] * 4, [0, 1] * 4
    return logits, targets


def keras_value_and_gradient(loss, logits: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """The loss and d loss / d logits on the active Keras backend."""
    backend = keras.backend.backend()
    if backend == "torch":
        x = torch.tensor(logits, requires_grad=True)
        value = loss(torch.tensor(targets), x)
        value.backward()
        return value.item(), x.grad.numpy()
    if backend == "jax":
        import jax

        value, grad = jax.value_and_grad(lambda x: loss(targets, x))(logits)
        return float(value), np.asarray(grad)
    import tensorflow as tf

    x = tf.Variable(logits)
    with tf.GradientTape() as tape:
        value = loss(targets, x)
    return float(value), tape.gradient(value, x).numpy()


def torch_value_and_gradient(module, logits: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    x = torch.tensor(logits, requires_grad=True)
    value = module(x, torch.tensor(targets))
    value.backward()
    return value.item(), x.grad.numpy()


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "class-weighted"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_keras_loss_matches_torch_odir(record, name, weighted):
    config = CONFIGS[name]
    pos_weight = POS_WEIGHT if weighted else None
    keras_loss = keras_training_loss(config, pos_weight)
    torch_loss = torch_training_loss(config, None if pos_weight is None else torch.from_numpy(pos_weight))
    values, grads = [], []
    for seed in (0, 1):
        logits, targets = batch(seed)
        got, got_grad = keras_value_and_gradient(keras_loss, logits, targets)
        want, want_grad = torch_value_and_gradient(torch_loss, logits, targets)
        assert np.isfinite(got_grad).all() and np.isfinite(want_grad).all()
        values.append((got, want))
        grads.append((got_grad, want_grad))
    case = f"loss {name}{', class-weighted' if weighted else ''}"
    record(f"{case}: value", [g for g, _ in values], [w for _, w in values], tol=LOSS_TOL)
    record(f"{case}: d/dlogits (relative)", np.stack([g for g, _ in grads]), np.stack([w for _, w in grads]),
           tol=LOSS_TOL, relative=True)
