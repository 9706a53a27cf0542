"""keras_odir.executor: a functional model run from its plan computes what ``model(x)`` computes, bit for bit on
the torch backend (the same kernels in the same order), outputs, gradients and BatchNorm statistics; on jax
and tensorflow the planned model is Keras' own functional model and trains."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from keras_odir.executor import PlannedModel, planned
from keras_odir.model import build_dual_model
from keras_odir.precision import dtype_policy
from odir_core.model.model_spec import BACKBONES, HEADS

SIZE = 32
QUICK = {("resnet18", "float32"), ("resnet18", "bf16")}  # the default run; the rest: -m slow


def _cases(names, precisions=("float32", "bf16")):
    """(name, precision) pairs, those outside QUICK marked slow (the suite's time budget)."""
    return [pytest.param(n, p, marks=() if (n, p) in QUICK else pytest.mark.slow) for n in names for p in precisions]


torch = pytest.importorskip("torch") if keras.backend.backend() == "torch" else None
on_torch = pytest.mark.skipif(keras.backend.backend() != "torch", reason="the plan runs on the torch backend")


def _inputs(seed=0, size=SIZE):
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=(2, size, size, 3)).astype("float32") for k in ("left", "right")}


def _randomize_statistics(model):
    """Moving statistics away from (0, 1), so inference mode tells them apart."""
    rng = np.random.default_rng(1)
    for v in model.non_trainable_variables:
        if "moving_mean" in v.path:
            v.assign(rng.normal(scale=0.1, size=v.shape).astype(v.dtype))
        elif "moving_variance" in v.path:
            v.assign(rng.uniform(0.5, 1.5, size=v.shape).astype(v.dtype))


def _outputs_and_gradients(model, x, training):
    """Logits, d sum(logits) / d (inputs, trainable weights), with torch autograd."""
    keras.utils.set_random_seed(7)  # the same dropout masks
    xs = [torch.tensor(x[k], requires_grad=True) for k in ("left", "right")]
    y = model({"left": xs[0], "right": xs[1]}, training=training)
    weights = [v.value for v in model.trainable_variables]
    grads = torch.autograd.grad(y.float().sum(), xs + weights, allow_unused=True)
    return [y.detach()] + [torch.zeros(()) if g is None else g for g in grads]


def _assert_identical(model, x):
    """Outputs and gradients of ``model`` and its plan, each from the same state (BatchNorm statistics, the
    seed generators' states of dropout and stochastic depth)."""
    plan = planned(model)
    assert isinstance(plan, PlannedModel) and plan.layers == model.layers
    state = [keras.ops.convert_to_numpy(v) for v in model.non_trainable_variables]

    def restored(m):
        for v, value in zip(model.non_trainable_variables, state):
            v.assign(value)
        return m

    for training in (True, False):
        expected = _outputs_and_gradients(restored(model), x, training)
        plan.__dict__["_graph_plan"] = None
        got = _outputs_and_gradients(restored(plan), x, training)
        assert plan.__dict__["_graph_plan"] is not None  # the call ran the plan, not Keras' own call
        assert len(expected) == len(got)
        for a, b in zip(expected, got):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert float((a.double() - b.double()).abs().max()) == 0.0


@on_torch
# every registered backbone but the ViT-L/16s (vit_l_16, retfound: ViT-B/16's layers, deeper and wider: 304 M weights)
@pytest.mark.parametrize("backbone,precision",
                         _cases([name for name in BACKBONES if name not in ("vit_l_16", "retfound")]))
def test_every_backbone_bit_identical(backbone, precision):
    keras.utils.set_random_seed(0)
    with dtype_policy(precision):
        model = build_dual_model(backbone, "v0", image_size=SIZE)
    _randomize_statistics(model)
    _assert_identical(model, _inputs())


@on_torch
@pytest.mark.parametrize("head,precision", _cases(HEADS))
def test_every_head_bit_identical(head, precision):
    keras.utils.set_random_seed(0)
    with dtype_policy(precision):
        model = build_dual_model("resnet18", head, image_size=SIZE)
    _randomize_statistics(model)
    _assert_identical(model, _inputs())


@on_torch
@pytest.mark.slow
def test_frozen_backbone_and_inference_model():
    from keras_odir.parts import dual_parts

    keras.utils.set_random_seed(0)
    model = build_dual_model("resnet18", "v1", image_size=SIZE, freeze_backbone=True)
    _randomize_statistics(model)
    _assert_identical(model, _inputs())
    inference = dual_parts(model).inference_model(model)
    x = _inputs(2)
    expected = keras.ops.convert_to_numpy(inference.predict_on_batch(x))
    assert np.array_equal(keras.ops.convert_to_numpy(planned(inference).predict_on_batch(x)), expected)


@on_torch
@pytest.mark.parametrize("precision", ["float32", pytest.param("bf16", marks=pytest.mark.slow)])
def test_batchnorm_statistics_after_a_training_call(precision):
    keras.utils.set_random_seed(0)
    with dtype_policy(precision):
        model = build_dual_model("resnet18", "v0", image_size=SIZE)
    _randomize_statistics(model)
    start = [keras.ops.convert_to_numpy(v) for v in model.non_trainable_variables]
    x = _inputs(3)
    model(x, training=True)
    expected = [keras.ops.convert_to_numpy(v) for v in model.non_trainable_variables]
    for v, value in zip(model.non_trainable_variables, start):
        v.assign(value)
    planned(model)(x, training=True)
    got = [keras.ops.convert_to_numpy(v) for v in model.non_trainable_variables]
    assert any(not np.array_equal(a, b) for a, b in zip(start, got))  # they moved
    for a, b in zip(expected, got):
        assert np.array_equal(a, b)


@on_torch
def test_fit_step_identical():
    """One SGD step of fit: the same weights and statistics through the plan as through Keras' own call."""
    x, y = _inputs(4), np.random.default_rng(5).integers(0, 2, size=(2, 8)).astype("float32")
    results = []
    for wrap in (lambda m: m, planned):
        keras.utils.set_random_seed(0)
        model = wrap(build_dual_model("resnet18", "v1", image_size=SIZE))
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="binary_crossentropy")
        keras.utils.set_random_seed(1)
        model.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0)
        results.append([keras.ops.convert_to_numpy(v) for v in model.variables])
    assert model.__dict__["_graph_plan"] is not None  # fit's batches (torch tensors) ran through the plan
    assert all(np.array_equal(a, b) for a, b in zip(*results))


def test_saved_planned_model_loads(tmp_path):
    """A saved planned model (last.keras, with its optimizer) loads as one, computing the same; the same layers
    saved as a plain functional model load as a plain one."""
    keras.utils.set_random_seed(0)
    model = planned(build_dual_model("resnet18", "v0", image_size=SIZE))
    model.compile(optimizer="sgd", loss="binary_crossentropy")
    x = _inputs(6)
    model.fit(x, np.ones((2, 8), "float32"), verbose=0)
    model.save(tmp_path / "a.keras")
    plain = keras.Model(model.input, model.output, name=model.name)
    plain.save(tmp_path / "b.keras")
    loaded = keras.saving.load_model(tmp_path / "a.keras")
    assert isinstance(loaded, PlannedModel) and loaded.optimizer is not None
    assert type(keras.saving.load_model(tmp_path / "b.keras")) is not PlannedModel
    expected = keras.ops.convert_to_numpy(model.predict_on_batch(x))
    assert np.array_equal(keras.ops.convert_to_numpy(loaded.predict_on_batch(x)), expected)


OTHER_BACKEND_CHECK = textwrap.dedent(f"""
    import numpy as np, keras
    from tests.test_executor import _inputs, _randomize_statistics
    from keras_odir.executor import planned
    from keras_odir.model import build_dual_model
    keras.utils.set_random_seed(0)
    model = build_dual_model("resnet18", "v1", image_size={SIZE})
    _randomize_statistics(model)
    plan = planned(model)
    x = _inputs()
    state = [keras.ops.convert_to_numpy(v) for v in model.non_trainable_variables]

    def restored(m):  # the same statistics and dropout seeds for both
        for v, value in zip(model.non_trainable_variables, state):
            v.assign(value)
        return m

    for training in (False, True):
        a = keras.ops.convert_to_numpy(restored(model)(x, training=training))
        b = keras.ops.convert_to_numpy(restored(plan)(x, training=training))
        assert np.abs(a - b).max() <= 1e-6, (training, np.abs(a - b).max())
    plan.compile(optimizer="sgd", loss="binary_crossentropy")
    before = [keras.ops.convert_to_numpy(v) for v in plan.trainable_variables]
    history = plan.fit(x, np.ones((2, 8), "float32"), batch_size=2, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    after = [keras.ops.convert_to_numpy(v) for v in plan.trainable_variables]
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))
    print("ok", keras.backend.backend())
""")


@pytest.mark.parametrize("backend", [pytest.param("jax", marks=pytest.mark.slow), "tensorflow"])
def test_other_backends(backend):
    pytest.importorskip(backend)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", OTHER_BACKEND_CHECK], env=env, cwd=root, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0 and f"ok {backend}" in result.stdout, result.stderr[-3000:]
