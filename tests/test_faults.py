"""Faults that must never look like success: a diverged (NaN) run exits non-zero in both trainers and
writes no checkpoint with non-finite weights, and predict / evaluate / convert refuse such weights."""

import numpy as np
import pytest
import torch

import keras_odir  # noqa: F401  (torch backend unless KERAS_BACKEND says otherwise)
import keras
import torch_odir.train as ttrain
from keras_odir.convert import main as convert
from keras_odir.model import build_dual_model
from keras_odir.predict import main as keras_predict
from odir_core.config import TrainConfig, save_config
from odir_core.synthetic import generate
from torch_odir.model import DualResNet50
from torch_odir.predict import main as torch_predict
from training_runs import only_run, tiny_train_args


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn") / "set", patients=20, size=40, seed=3)


def test_diverged_torch_run_exits_non_zero_and_keeps_finite_checkpoints(data, tmp_path, capsys):
    assert ttrain.main(tiny_train_args(data, tmp_path, "--epochs", "4", "--lr", "1e30", "--fine-tune")) == 1
    err = capsys.readouterr().err
    assert "NaN or infinite" in err and "--lr" in err and "Traceback" not in err
    run = only_run(tmp_path)
    for name in ("best.pth", "last.pth"):
        if (run / name).exists():
            state = torch.load(run / name, weights_only=False)["state_dict"]
            assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory, data):
    """A run folder holding best.keras and best.pth whose weights contain NaN."""
    root = tmp_path_factory.mktemp("poisoned")
    save_config(TrainConfig(data=str(data), image_size=32, weights="none"), root / "config.toml")
    model = DualResNet50("v0")
    with torch.no_grad():
        model.head[0].weight[0, 0] = float("nan")
    torch.save({"state_dict": model.state_dict()}, root / "best.pth")
    keras_model = build_dual_model(head="v0")
    keras_model.get_layer("head").get_layer("head_0").bias.assign(np.full(8, np.inf, "float32"))
    keras_model.save(root / "best.keras")
    return root


@pytest.mark.parametrize("suffix", [".keras", ".pth"])
def test_predict_refuses_non_finite_weights(poisoned, data, capsys, suffix):
    photos = [str(p) for p in sorted((data / "images").iterdir())[:2]]
    predict = keras_predict if suffix == ".keras" else torch_predict
    assert predict(["--model", str(poisoned / f"best{suffix}"), *photos]) == 2
    err = capsys.readouterr().err
    assert "non-finite weights" in err and "Traceback" not in err


@pytest.mark.parametrize("src,dst", [("best.pth", "out.keras"), ("best.keras", "out.pth")])
def test_convert_refuses_non_finite_weights(poisoned, tmp_path, capsys, src, dst):
    assert convert([str(poisoned / src), str(tmp_path / dst)]) == 1
    assert "non-finite weights" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
