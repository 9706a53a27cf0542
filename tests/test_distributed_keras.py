"""keras_odir.train on the torch backend under torchrun with two gloo processes (gradients averaged inside
model.fit) against one process with the same global batch."""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import json

import keras
import numpy as np
import pandas as pd
import pytest

import keras_odir.train as ktrain
from distributed_runs import job_args, rank_output, torchrun
from odir_core.synthetic import generate
from training_runs import only_run

pytestmark = pytest.mark.skipif(keras.backend.backend() != "torch", reason="torchrun trains on the torch backend")


def weights(run):
    return keras.saving.load_model(run / "last.keras", compile=False).get_weights()


def max_difference(a, b) -> float:
    return max(float(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)).max()) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn") / "set", patients=20, size=40, seed=3)


@pytest.fixture(scope="module")
def two(data, tmp_path_factory):
    """The jobs trained by two processes, in one torchrun launch."""
    out = tmp_path_factory.mktemp("two")
    torchrun("keras", out, data, "frozen", "frozen_images", "fine_tuned", "straight", "cut", "resume")
    return out


@pytest.fixture(scope="module")
def one(data, tmp_path_factory):
    """The reference: the same jobs trained by one process."""
    out = tmp_path_factory.mktemp("one")
    for job in ("frozen", "frozen_images", "fine_tuned"):
        assert ktrain.main(job_args(job, data, out)) == 0
    return out


@pytest.mark.parametrize("job", ["frozen", "frozen_images"])
def test_frozen_backbone_two_processes_equal_one(one, two, job):
    a, b = weights(only_run(one / job)), weights(only_run(two / job))
    assert max_difference(a, b) <= 1e-6
    assert max_difference(a, weights(only_run(one / "fine_tuned"))) > 0  # the comparison can tell runs apart


def test_validation_metrics_and_loss_of_two_processes_equal_one(one, two):
    a = pd.read_csv(only_run(one / "frozen") / "history.csv")
    b = pd.read_csv(only_run(two / "frozen") / "history.csv")
    assert list(a.columns) == list(b.columns)
    val = [c for c in a.columns if c.startswith("val_")]
    np.testing.assert_allclose(b[val], a[val], rtol=0, atol=1e-6)
    np.testing.assert_allclose(b["train_loss"], a["train_loss"], rtol=1e-5)


def test_fine_tuned_with_per_process_batchnorm_differs_from_one(one, two):
    a, b = weights(only_run(one / "fine_tuned")), weights(only_run(two / "fine_tuned"))
    assert max_difference(a, b) > 1e-4  # BatchNorm normalises 4 rows per process instead of 8
    assert all(np.isfinite(w).all() for w in b)


def test_only_rank_0_writes_and_prints(two):
    assert json.loads((two / "codes.json").read_text()) == {"frozen": 0, "frozen_images": 0, "fine_tuned": 0,
                                                            "straight": 0, "cut": 130, "resume": 0}
    for job in ("frozen", "frozen_images", "fine_tuned", "straight"):
        run = only_run(two / job)
        assert {p.name for p in run.iterdir()} == {"config.toml", "best.keras", "last.keras", "train_results.xlsx",
                                                   "history.csv", "tensorboard", "finished.json"}
    assert "Epoch 1/1" in rank_output(two, 0) and rank_output(two, 1) == ""


def test_resume_under_two_processes_equals_the_uninterrupted_run(two):
    a, b = weights(only_run(two / "straight")), weights(only_run(two / "cut"))
    assert max_difference(a, b) <= 1e-6
    assert len(pd.read_csv(only_run(two / "cut") / "history.csv")) == 2
