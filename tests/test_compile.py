"""``--compile``: the graph executor's plan under ``torch.compile`` (keras_odir on the torch backend) and
torch_odir's model under ``torch.compile``: one graph without breaks, the numbers of the eager run up to float
rounding, and both trainers training with it."""

import keras
import numpy as np
import pandas as pd
import pytest

import keras_odir.train as ktrain
import torch_odir.train as ttrain
from keras_odir.executor import GraphPlan, planned
from keras_odir.model import build_dual_model
from keras_odir.parts import dual_parts
from odir_core.data.synthetic import generate
from odir_core.model.model_spec import BACKBONES, HEADS
from odir_core.training.config import TrainConfig
from training_runs import only_run, tiny_train_args

if keras.backend.backend() != "torch":
    pytest.skip("the plan is compiled on the torch backend", allow_module_level=True)
torch = pytest.importorskip("torch")

SIZE = 32


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    return [torch.from_numpy(rng.normal(size=(2, SIZE, SIZE, 3)).astype("float32")) for _ in range(2)]


@pytest.mark.parametrize("backend, flag, expected", [
    ("torch", True, (True, "auto")), ("torch", False, (False, "auto")),
    ("jax", True, (False, True)), ("tensorflow", True, (False, True)), ("jax", False, (False, "auto")),
])
def test_the_flag_compiles_the_plan_on_torch_and_is_jit_compile_elsewhere(monkeypatch, backend, flag, expected):
    """(plan under torch.compile, Keras' jit_compile) of keras_odir.train for ``--compile`` on each backend."""
    monkeypatch.setattr(keras.backend, "backend", lambda: backend)
    assert ktrain.compile_modes(TrainConfig(compile=flag)) == expected


QUICK = {("resnet18", "mldecoder")}  # the default run (the richest head); every other pair: -m slow


@pytest.mark.parametrize("backbone,head", [pytest.param(b, h, marks=() if (b, h) in QUICK else pytest.mark.slow)
                                           for b in BACKBONES for h in HEADS])
def test_the_plan_is_one_graph_without_breaks(backbone, head):
    """torch._dynamo traces the whole dual model's plan (both eyes, the head, BatchNorm's statistics updates in
    training mode) into one graph per mode (``fullgraph=True``: a graph break raises), which the next call reuses."""
    from torch._dynamo.testing import CompileCounter

    plan = GraphPlan(build_dual_model(backbone, head, image_size=SIZE))
    torch._dynamo.reset()
    graphs = CompileCounter()
    # what ``GraphPlan.compile`` compiles, with a backend that counts the graphs
    plan.execute = torch.compile(plan.execute, backend=graphs, fullgraph=True)
    for training in (True, False):
        plan.run(_inputs(), training)
    assert graphs.frame_count == 2 and graphs.op_count > 100
    # and the graphs are reused: no call changes what they were traced under (a Keras op built per call renames a
    # global counter, which made every call a recompilation)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for training in (True, False):
            plan.run(_inputs(1), training)
    assert graphs.frame_count == 2


def _outputs_and_gradients(model, x):
    y = model({"left": x[0], "right": x[1]}, training=True)
    grads = torch.autograd.grad(y.sum(), [v.value for v in model.trainable_variables])
    return [y.detach(), *grads]


@pytest.mark.slow  # compiling a backbone's forward and backward takes minutes on a CPU
def test_the_compiled_plan_computes_what_the_eager_plan_does():
    """Logits, gradients of every weight and BatchNorm's updated statistics, training mode, from the same state
    (head v0: no dropout, whose masks compiled code draws from a generator of its own)."""
    model = build_dual_model("resnet18", "v0", image_size=SIZE)
    state = [keras.ops.convert_to_numpy(v) for v in model.non_trainable_variables]
    results = []
    for compiled in (False, True):
        for v, value in zip(model.non_trainable_variables, state):
            v.assign(value)
        got = _outputs_and_gradients(planned(model, compile=compiled), _inputs())
        results.append(got + [v.value.clone() for v in model.non_trainable_variables])
    for eager, compiled in zip(*results, strict=True):
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5 * max(1.0, float(eager.abs().max())))


@pytest.mark.slow  # the frozen trainer test below compiles the same head and compares its losses with eager ones
def test_the_compiled_head_computes_what_the_eager_head_does():
    """The part ``--compile`` compiles with a frozen backbone (the head on cached features): logits and the
    gradients of its weights, to float rounding (head v0: compiled code draws dropout masks from a generator
    of its own)."""
    head = dual_parts(build_dual_model("resnet18", "v0", image_size=SIZE)).head
    features = torch.from_numpy(np.random.default_rng(0).normal(size=(4, head.input.shape[-1])).astype("float32"))
    results = []
    for compiled in (False, True):
        keras.utils.set_random_seed(7)
        y = planned(head, compile=compiled)(features, training=True)
        results.append([y.detach(), *torch.autograd.grad(y.sum(), [v.value for v in head.trainable_variables])])
    for eager, compiled in zip(*results, strict=True):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn") / "set", patients=20, size=40, seed=3)


TRAINERS = {"keras": ktrain.main, "torch": ttrain.main}


def _train(trainer, data, run_root, *flags):
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    args = tiny_train_args(data, run_root, "--backbone", "resnet18", "--head", "v0", "--epochs", "2", *flags)
    assert TRAINERS[trainer](args) == 0
    return pd.read_csv(only_run(run_root) / "history.csv"), torch._dynamo.utils.counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("trainer", TRAINERS)
@pytest.mark.parametrize("tuning", ["frozen", pytest.param("fine-tuned", marks=pytest.mark.slow)])
def test_each_trainer_trains_compiled_as_it_trains_eagerly(data, tmp_path, trainer, tuning):
    """``--compile``: graphs compiled, and the epochs' losses those of the eager run to float rounding (frozen: the
    head on cached features, what is compiled is the head; fine-tuned: the whole dual model; head v0, without
    dropout, whose masks compiled code draws from a generator of its own)."""
    flags = ["--no-fine-tune"] if tuning == "frozen" else ["--fine-tune"]
    eager, none = _train(trainer, data, tmp_path / "eager", *flags)
    compiled, graphs = _train(trainer, data, tmp_path / "compiled", *flags, "--compile")
    assert none == 0 and graphs > 0
    # fine-tuned on 16 patients the run is chaotic: the compiled kernels' rounding (inductor's own BatchNorm
    # arithmetic) grows past 1 % within a few SGD steps, so there the first epoch's loss is what is compared
    columns = {"frozen": ["train_loss", "val_loss"], "fine-tuned": ["train_loss"]}[tuning]
    rows = slice(None) if tuning == "frozen" else slice(0, 1)
    for column in columns:
        np.testing.assert_allclose(compiled[column][rows], eager[column][rows], rtol=1e-4)


def test_stochastic_depth_traces_and_drops_whole_samples():
    """Under torch.compile StochasticDepth draws from torch's generator (a seeded Keras draw would break the graph):
    each sample is zeroed or scaled by 1 / (1 - rate), as in eager training."""
    from keras_odir.layers import StochasticDepth

    layer = StochasticDepth(0.5, seed=1)
    x = torch.ones((64, 2, 2, 3))
    y = torch.compile(lambda t: layer(t, training=True), fullgraph=True, backend="eager")(x)
    rows = {float(v) for v in y.reshape(64, -1).unique(dim=0).flatten()}
    assert rows == {0.0, 2.0}
    assert 10 < int((y[:, 0, 0, 0] == 0).sum()) < 54  # about half the samples dropped
