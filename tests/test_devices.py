"""``--device`` in both trainers: one rule (``odir_core.training.devices``); keras_odir honours it on the torch
backend (``keras.device``) and refuses anything but ``auto`` on the others; an unavailable device is one line."""

from __future__ import annotations

import keras_odir  # noqa: F401  (torch backend unless KERAS_BACKEND says otherwise)
import keras
import pytest
import torch

import keras_odir.train as ktrain
import torch_odir.train as ttrain
from keras_odir.devices import chosen_device, on_device
from odir_core.training.devices import DeviceError
from training_runs import tiny_train_args

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def test_keras_torch_backend_puts_tensors_on_the_chosen_device():
    assert keras.backend.backend() == "torch"
    assert chosen_device("auto") is None
    with on_device(chosen_device("cpu")):
        assert keras.ops.zeros((2,)).device == torch.device("cpu")
        assert keras.Variable([1.0]).value.device == torch.device("cpu")


@no_cuda
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_keras_refuses_an_unavailable_cuda_device(name):
    with pytest.raises(DeviceError, match=f"--device {name}: no CUDA device is available"):
        chosen_device(name)


@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
def test_other_backends_take_auto_only(monkeypatch, backend):
    monkeypatch.setattr(keras.backend, "backend", lambda: backend)
    assert chosen_device("auto") is None
    with pytest.raises(DeviceError) as error:
        chosen_device("cpu")
    message = str(error.value)
    assert message.startswith("--device cpu: the") and backend in message
    assert "CUDA_VISIBLE_DEVICES" in message and "KERAS_BACKEND=torch" in message and "\n" not in message


@no_cuda
@pytest.mark.parametrize("main", [ktrain.main, ttrain.main], ids=["keras", "torch"])
def test_training_on_an_unavailable_device_is_one_line_and_writes_nothing(main, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(tiny_train_args(tmp_path / "data", runs, "--device", "cuda")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device cuda: no CUDA device is available; use --device cpu or auto" in err[0]
    assert not runs.exists()


@pytest.mark.parametrize("main", [ktrain.main, ttrain.main], ids=["keras", "torch"])
def test_device_is_in_both_trainers_help(main, capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--device" in capsys.readouterr().out
