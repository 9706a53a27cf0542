"""keras_odir's TorchAdamW and TorchSGD with param groups (layer-decay learning-rate scales, weights without weight
decay) against torch.optim.AdamW / SGD with the same groups, over several steps of a changing learning rate:
warmup_cosine per step, in Keras the optimizer's own per-step table (``StepLearningRate``), in torch ``LambdaLR``.
float32 on every backend (this suite's re-runs); tolerance 1e-6 absolute on weights of magnitude ~1."""

import numpy as np
import pytest
import torch

from keras_odir.lr_schedule import StepLearningRate
from keras_odir.optimizers import TorchAdamW, TorchSGD

import keras  # noqa: E402  (after keras_odir, which picks the default backend)
from keras import ops  # noqa: E402

SHAPES = [(6, 4), (4,), (3, 3, 2, 4), (5,), (2, 5)]
SCALES = [1.0, 1.0, 0.65, 0.65 ** 2, 0.65 ** 3]  # head, head bias, three depths below it
DECAYS = [True, False, True, False, True]
STEPS, STEPS_PER_EPOCH = 12, 3
SCHEDULE = dict(epochs=4, warmup_epochs=1, min_lr=1e-4, steps_per_epoch=STEPS_PER_EPOCH)
WEIGHT_TOL = 1e-6


def starting_point(seed=0):
    rng = np.random.default_rng(seed)
    weights = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    grads = [[rng.normal(size=s).astype(np.float32) for s in SHAPES] for _ in range(STEPS)]
    return weights, grads


def torch_steps(weights, grads, optimizer_class, lr, weight_decay, **kwargs):
    params = [torch.nn.Parameter(torch.tensor(w)) for w in weights]
    groups = [{"params": [p], "lr": lr * scale, "weight_decay": weight_decay if decay else 0.0}
              for p, scale, decay in zip(params, SCALES, DECAYS)]
    optimizer = optimizer_class(groups, lr=lr, weight_decay=weight_decay, **kwargs)
    schedule = StepLearningRate("warmup_cosine", lr, SCHEDULE).schedule
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, **schedule.torch_kwargs())
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = torch.tensor(g)
        optimizer.step()
        scheduler.step()
    return [p.detach().numpy() for p in params]


def keras_steps(weights, grads, optimizer_class, lr, **kwargs):
    variables = [keras.Variable(w) for w in weights]
    optimizer = optimizer_class(learning_rate=StepLearningRate("warmup_cosine", lr, SCHEDULE), **kwargs)
    optimizer.set_param_groups(zip(variables, SCALES, DECAYS))
    for step_grads in grads:
        optimizer.apply([ops.convert_to_tensor(g) for g in step_grads], variables)
    return [ops.convert_to_numpy(v) for v in variables]


@pytest.mark.parametrize("betas,eps", [((0.9, 0.999), 1e-8), ((0.9, 0.95), 1e-6)], ids=["default", "mae"])
def test_torch_adamw_with_param_groups_equals_torch(record, betas, eps):
    weights, grads = starting_point()
    want = torch_steps(weights, grads, torch.optim.AdamW, 5e-3, 0.05, betas=betas, eps=eps)
    got = keras_steps(weights, grads, TorchAdamW, 5e-3, beta_1=betas[0], beta_2=betas[1], epsilon=eps,
                      weight_decay=0.05)
    for i, (a, b) in enumerate(zip(got, want)):
        assert not np.array_equal(b, weights[i])
        record(f"TorchAdamW {betas} groups, {STEPS} warmup_cosine steps: weight {i}", a, b, tol=WEIGHT_TOL)


def test_torch_sgd_with_param_groups_equals_torch(record):
    weights, grads = starting_point(seed=1)
    want = torch_steps(weights, grads, torch.optim.SGD, 0.05, 1e-2, momentum=0.9)
    got = keras_steps(weights, grads, TorchSGD, 0.05, momentum=0.9, weight_decay=1e-2)
    for i, (a, b) in enumerate(zip(got, want)):
        record(f"TorchSGD groups, {STEPS} warmup_cosine steps: weight {i}", a, b, tol=WEIGHT_TOL)


def test_keras_adamw_is_not_torch_adamw():
    """Why TorchAdamW exists: Keras' AdamW puts epsilon before the bias correction and decays with the unscaled
    rate; with small gradients (a second moment near epsilon) the steps differ well above the tolerance (the two
    first weights: learning-rate scale 1, no weight decay here)."""
    weights, grads = starting_point(seed=2)
    grads = [[g * 1e-4 for g in step] for step in grads]
    want = torch_steps(weights, grads, torch.optim.AdamW, 5e-3, 0.0, eps=1e-6)
    variables = [keras.Variable(w) for w in weights]
    optimizer = keras.optimizers.AdamW(learning_rate=StepLearningRate("warmup_cosine", 5e-3, SCHEDULE),
                                       weight_decay=0.0, epsilon=1e-6)
    for step_grads in grads:
        optimizer.apply([ops.convert_to_tensor(g) for g in step_grads], variables)
    assert max(np.abs(ops.convert_to_numpy(v) - b).max() for v, b in zip(variables[:2], want[:2])) > 1e-4
