"""keras_odir.initializers: Keras' random initialisers drawn with NumPy. Each draws the distribution of Keras' own
class with the same arguments (two-sample Kolmogorov-Smirnov test against Keras' draw, and the formula's moments),
seeds behave as Keras' do, and building a model on jax compiles no random program."""

import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
from scipy import stats

from keras_odir import initializers

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (3, 3, 64, 96)  # a conv kernel: fan_in 576, fan_out 864
FAN_IN, FAN_OUT = 3 * 3 * 64, 3 * 3 * 96
CASES = [  # (keras_odir's, Keras' own, expected standard deviation, expected bound or None)
    ("normal", initializers.RandomNormal(0.5, 0.02, seed=1), keras.initializers.RandomNormal(0.5, 0.02, seed=2),
     0.02, None),
    ("uniform", initializers.RandomUniform(-0.3, 0.1, seed=1), keras.initializers.RandomUniform(-0.3, 0.1, seed=2),
     0.4 / np.sqrt(12), (-0.3, 0.1)),
    ("he normal, fan_out", initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal", seed=1),
     keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal", seed=2), np.sqrt(2.0 / FAN_OUT), None),
    ("torch Linear, fan_in uniform", initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform", seed=1),
     keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform", seed=2), np.sqrt(1.0 / 3.0 / FAN_IN),
     (-1.0 / np.sqrt(FAN_IN), 1.0 / np.sqrt(FAN_IN))),
    ("glorot uniform", initializers.VarianceScaling(1.0, "fan_avg", "uniform", seed=1),
     keras.initializers.GlorotUniform(seed=2), np.sqrt(2.0 / (FAN_IN + FAN_OUT)),
     (-np.sqrt(6.0 / (FAN_IN + FAN_OUT)), np.sqrt(6.0 / (FAN_IN + FAN_OUT)))),
]


@pytest.mark.parametrize("name, ours, theirs, std, bounds", CASES, ids=[c[0] for c in CASES])
def test_draws_the_distribution_of_keras_own_initializer(name, ours, theirs, std, bounds):
    mine = keras.ops.convert_to_numpy(ours(SHAPE, "float32"))
    reference = keras.ops.convert_to_numpy(theirs(SHAPE, "float32"))
    assert mine.shape == SHAPE and mine.dtype == np.float32
    assert stats.ks_2samp(mine.ravel(), reference.ravel()).pvalue > 1e-3  # 55296 values each
    assert mine.std() == pytest.approx(std, rel=0.02)
    assert abs(mine.mean() - reference.mean()) < 0.02 * std
    if bounds:
        assert bounds[0] <= mine.min() < bounds[0] + 0.01 * std and bounds[1] - 0.01 * std < mine.max() <= bounds[1]


def test_seeds_behave_as_keras_seeds():
    """An integer seed draws the same values at every call (Keras' rule); an unseeded initialiser takes its seed
    from Python's ``random`` (which ``keras.utils.set_random_seed`` seeds); a SeedGenerator is left to Keras."""
    def draw(initializer, shape):
        return keras.ops.convert_to_numpy(initializer(shape))

    seeded = initializers.RandomNormal(seed=3)
    np.testing.assert_array_equal(draw(seeded, (4, 5)), draw(seeded, (4, 5)))
    draws = []
    for _ in range(2):
        random.seed(11)
        draws.append(draw(initializers.VarianceScaling(2.0, "fan_in", "uniform"), (6, 7)))
    np.testing.assert_array_equal(*draws)
    assert not np.array_equal(draws[0], draw(initializers.VarianceScaling(2.0, "fan_in", "uniform"), (6, 7)))
    generator = initializers.RandomUniform(seed=keras.random.SeedGenerator(5))
    assert keras.ops.convert_to_numpy(generator((3, 3))).std() > 0


def test_a_model_saved_with_them_loads(tmp_path):
    inputs = keras.Input((4,))
    dense = keras.layers.Dense(3, kernel_initializer=initializers.VarianceScaling(1.0, "fan_avg", "uniform"),
                               bias_initializer=initializers.RandomNormal(stddev=0.1))
    model = keras.Model(inputs, dense(inputs))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    initializer = loaded.layers[-1].kernel_initializer
    assert isinstance(initializer, initializers.VarianceScaling) and initializer.mode == "fan_avg"
    np.testing.assert_array_equal(loaded.get_weights()[0], model.get_weights()[0])


BUILD_ON_JAX = textwrap.dedent("""
    import logging, jax, keras
    from keras_odir.folding import fold_batchnorm
    from keras_odir.model import build_dual_model
    compiled = []
    class Compiles(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("Compiling "):
                compiled.append(record.getMessage().split(" with ")[0])
    jax.config.update("jax_log_compiles", True)
    logging.getLogger("jax").addHandler(Compiles())
    keras.initializers.RandomNormal(stddev=0.1)((3, 4))  # the control: Keras' own draw compiles
    print("control:", compiled)
    compiled.clear()
    fold_batchnorm(build_dual_model("resnet18", "mldecoder", image_size=32))
    print("model:", sorted(set(compiled)))
""")


def test_building_and_folding_a_model_on_jax_compiles_no_random_program():
    """On jax, Keras' random initialisers compile one program per weight shape (0.2 s each on a CPU); the dual model
    (backbone, ML-Decoder head) and its BatchNorm-folded inference model are built without any."""
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", BUILD_ON_JAX], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    control = next(line for line in done.stdout.splitlines() if line.startswith("control:"))
    model = next(line for line in done.stdout.splitlines() if line.startswith("model:"))
    assert "jit(_normal)" in control  # the check can see a random program being compiled
    assert not any(name in model for name in ("_normal", "_uniform", "truncated")), model
