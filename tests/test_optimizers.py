"""keras_odir.optimizers.TorchSGD against torch.optim.SGD and hand-computed steps; TorchAdamW saved and restored.

Runs on whichever Keras backend is active (torch by default; also passes with
KERAS_BACKEND=jax); the reference is always torch itself.
"""

import numpy as np
import pytest
import torch

from keras_odir.lr_schedule import StepLearningRate
from keras_odir.optimizers import TorchAdamW, TorchSGD

import keras  # noqa: E402  (after keras_odir, which picks the default backend)
from keras import ops  # noqa: E402

SHAPES = [(3, 4), (4,), (2, 3, 3)]


def gradient_sequence(steps, seed=0):
    rng = np.random.default_rng(seed)
    return [[rng.normal(size=s).astype(np.float32) for s in SHAPES] for _ in range(steps)]


def initial_weights(seed=1):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=s).astype(np.float32) for s in SHAPES]


def run_torch(weights, grads, lrs, momenta, **kwargs):
    params = [torch.nn.Parameter(torch.tensor(w)) for w in weights]
    opt = torch.optim.SGD(params, lr=lrs[0], momentum=momenta[0], **kwargs)
    for step_grads, lr, mu in zip(grads, lrs, momenta):
        for group in opt.param_groups:
            group["lr"], group["momentum"] = lr, mu
        for p, g in zip(params, step_grads):
            p.grad = torch.tensor(g)
        opt.step()
    return [p.detach().numpy() for p in params]


def run_keras(weights, grads, lrs, momenta, **kwargs):
    variables = [keras.Variable(w) for w in weights]
    opt = TorchSGD(learning_rate=lrs[0], momentum=momenta[0], **kwargs)
    for step_grads, lr, mu in zip(grads, lrs, momenta):
        opt.learning_rate = lr
        opt.momentum = mu
        opt.apply([ops.convert_to_tensor(g) for g in step_grads], variables)
    return [ops.convert_to_numpy(v) for v in variables]


def assert_close(ours, theirs, rtol=1e-5, atol=1e-6):
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


# lr and momentum change between steps, as LinearLR / CyclicLR do between epochs.
LRS = [0.1, 0.1, 0.05, 0.05, 0.2, 0.01, 0.01, 0.3]
MOMENTA = [0.9, 0.9, 0.85, 0.8, 0.8, 0.85, 0.9, 0.9]


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"nesterov": True},
        {"weight_decay": 1e-2},
        {"weight_decay": 5e-4, "nesterov": True},
        {"dampening": 0.3},
    ],
    ids=["plain", "nesterov", "weight_decay", "wd_nesterov", "dampening"],
)
def test_matches_torch_sgd_with_changing_lr_and_momentum(kwargs):
    grads = gradient_sequence(len(LRS))
    weights = initial_weights()
    expected = run_torch(weights, grads, LRS, MOMENTA, **kwargs)
    assert_close(run_keras(weights, grads, LRS, MOMENTA, **kwargs), expected)


def test_momentum_zero_is_plain_sgd_as_torch():
    grads = gradient_sequence(4)
    weights = initial_weights()
    kwargs = {"dampening": 0.5, "weight_decay": 0.1}
    zeros = [0.0] * 4
    expected = run_torch(weights, grads, LRS[:4], zeros, **kwargs)
    assert_close(run_keras(weights, grads, LRS[:4], zeros, **kwargs), expected)


def test_hand_computed_steps():
    """w0 = 1, grads 1, 2, -1; lr 0.1, 0.1, 0.5; mu 0.9, 0.5, 0.5:
    buf 1 -> 0.5*1 + 2 = 2.5 -> 0.5*2.5 - 1 = 0.25; w 1 - 0.1 = 0.9 -> 0.9 - 0.25 = 0.65
    -> 0.65 - 0.125 = 0.525."""
    w = keras.Variable(np.array([1.0], np.float32))
    opt = TorchSGD(learning_rate=0.1, momentum=0.9)
    seen = []
    for g, lr, mu in [(1.0, 0.1, 0.9), (2.0, 0.1, 0.5), (-1.0, 0.5, 0.5)]:
        opt.learning_rate, opt.momentum = lr, mu
        opt.apply([ops.convert_to_tensor(np.array([g], np.float32))], [w])
        seen.append(float(ops.convert_to_numpy(w)[0]))
    np.testing.assert_allclose(seen, [0.9, 0.65, 0.525], rtol=1e-6)


def test_keras_sgd_differs_once_lr_changes():
    """Why TorchSGD exists: Keras' SGD folds lr into the velocity."""
    grads = gradient_sequence(3)
    weights = initial_weights()
    lrs, momenta = [0.1, 0.01, 0.01], [0.9] * 3
    expected = run_torch(weights, grads, lrs, momenta)
    variables = [keras.Variable(w) for w in weights]
    sgd = keras.optimizers.SGD(learning_rate=0.1, momentum=0.9)
    for step_grads, lr in zip(grads, lrs):
        sgd.learning_rate = lr
        sgd.apply([ops.convert_to_tensor(g) for g in step_grads], variables)
    diff = max(np.abs(ops.convert_to_numpy(v) - e).max() for v, e in zip(variables, expected))
    assert diff > 1e-2
    assert_close(run_keras(weights, grads, lrs, momenta), expected)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="momentum must be in"):
        TorchSGD(momentum=1.5)
    with pytest.raises(ValueError, match="nesterov needs momentum > 0"):
        TorchSGD(momentum=0.0, nesterov=True)
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        TorchSGD(weight_decay=-1.0)
    opt = TorchSGD(momentum=0.9)
    with pytest.raises(ValueError, match="momentum must be in"):
        opt.momentum = -0.1


def small_model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((5,))
    outputs = keras.layers.Dense(3)(keras.layers.Dense(4, activation="relu")(inputs))
    return keras.Model(inputs, outputs)


def _assert_trains_on_alike(model, loaded, x, y, epochs: int) -> None:
    """The loaded optimizer's state equals the saved one's, and training on from either gives the same weights."""
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))
    model.fit(x, y, batch_size=4, epochs=epochs, verbose=0, shuffle=False)
    loaded.fit(x, y, batch_size=4, epochs=epochs, verbose=0, shuffle=False)
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_saved_in_keras_file_and_resumes_identically(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 5)).astype(np.float32)
    y = rng.normal(size=(8, 3)).astype(np.float32)

    model = small_model()
    model.compile(optimizer=TorchSGD(0.05, momentum=0.9, weight_decay=1e-3, nesterov=True), loss="mse")
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    model.optimizer.learning_rate = 0.02
    model.optimizer.momentum = 0.8
    path = tmp_path / "model.keras"
    model.save(path)

    loaded = keras.saving.load_model(path)
    opt = loaded.optimizer
    assert isinstance(opt, TorchSGD)
    assert float(ops.convert_to_numpy(opt.learning_rate)) == pytest.approx(0.02)
    assert float(ops.convert_to_numpy(opt.momentum)) == pytest.approx(0.8)
    assert opt.nesterov and opt.weight_decay == pytest.approx(1e-3)
    _assert_trains_on_alike(model, loaded, x, y, epochs=1)


def test_torch_adamw_saved_in_keras_file_and_resumes_identically(tmp_path):
    """TorchAdamW's state (step count, both running averages) and its per-step learning rate survive a .keras file:
    training on from the file equals training on in memory."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 5)).astype(np.float32)
    y = rng.normal(size=(8, 3)).astype(np.float32)
    lr = StepLearningRate("warmup_cosine", 0.01, dict(epochs=3, warmup_epochs=1, min_lr=1e-4, steps_per_epoch=2))
    model = small_model(seed=2)
    model.compile(optimizer=TorchAdamW(lr, beta_1=0.8, beta_2=0.99, epsilon=1e-7, weight_decay=0.1), loss="mse")
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)
    path = tmp_path / "model.keras"
    model.save(path)

    loaded = keras.saving.load_model(path)
    opt = loaded.optimizer
    assert isinstance(opt, TorchAdamW) and isinstance(opt._learning_rate, StepLearningRate)
    assert (opt.beta_1, opt.beta_2, opt.epsilon, opt.weight_decay) == pytest.approx((0.8, 0.99, 1e-7, 0.1))
    assert int(ops.convert_to_numpy(opt.iterations)) == 2
    _assert_trains_on_alike(model, loaded, x, y, epochs=2)


def test_torch_adamw_invalid_arguments():
    for kwargs, match in (({"beta_1": 1.0}, "beta_1 must be in"), ({"beta_2": -0.1}, "beta_2 must be in"),
                          ({"epsilon": 0.0}, "epsilon must be > 0"), ({"weight_decay": -1.0}, "weight_decay must")):
        with pytest.raises(ValueError, match=match):
            TorchAdamW(**kwargs)
