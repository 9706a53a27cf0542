"""RETFound (timm's ViT-L/16, global average pooling + fc_norm) from its published file layout, in Keras against
torch (timm), same weights.

A file in RETFound's layout (``retfound_files``: random weights, the MAE decoder's keys beside the encoder's) is
passed as ``--weights PATH`` to both trainers' model builders: the encoder's tensors are loaded, the decoder, mask
token and the encoder's final norm ignored, ``fc_norm`` starts at weight 1, bias 0 (as RETFound's fine-tuning
starts it), and the dual models' logits agree. By default at 2 blocks (the registered spec at that depth: every
block is the same code) at 224 px (the position embeddings' own size) and at 32 and 48 px (resampled to 2 x 2
and 3 x 3 as timm does; on jax and tensorflow 32 px by default, the rest slow); the whole 24-block network at 224
and 448 px is a slow check. Fresh Keras weights are
drawn as timm draws them. ``keras_odir.convert`` makes a Keras backbone of the file, and back.
"""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest
import torch

import keras_odir.train as ktrain
import torch_odir.train as ttrain
from keras_odir.convert import main as convert_main
from keras_odir.model import build_backbone
from keras_odir.weights import keras_to_numpy_state
from odir_core.data.synthetic import generate
from odir_core.model.families import vit
from odir_core.model.model_spec import BACKBONES
from odir_core.training.config import TrainConfig
from parity_helpers import assert_initialised_alike, images, nchw
from retfound_files import write_mae_checkpoint
from torch_odir.vit import timm_vision_transformer

NAME, DEPTH = "retfound", 2
TORCH_BACKEND = keras.backend.backend() == "torch"


def _small_file(monkeypatch, tmp_path, depth: int = DEPTH):
    """The registered spec at ``depth`` blocks, registered under its name for the test, and a RETFound file of it:
    (spec, path, the file's encoder tensors)."""
    spec = vit.at_depth(BACKBONES[NAME], depth) if depth != BACKBONES[NAME].blocks[0] else BACKBONES[NAME]
    monkeypatch.setitem(BACKBONES, NAME, spec)  # what the configs' backbone name resolves to
    path = tmp_path / "RETFound_cfp_weights.pth"
    return spec, path, write_mae_checkpoint(spec, path)


def _logits_from_file(monkeypatch, tmp_path, depth: int, size: int, record, head: str = "v1"):
    """Both trainers' dual models (``head``) from a RETFound file of the registered spec at ``depth`` blocks:
    the torch model's backbone holds the file's encoder, Keras holds torch's weights, and their logits agree."""
    spec, path, encoder = _small_file(monkeypatch, tmp_path, depth)
    config = TrainConfig(backbone=NAME, head=head, weights=str(path), image_size=size, seed=1)
    torch_model = ttrain.build_model(config).eval()
    loaded = torch_model.backbone.state_dict()
    assert set(loaded) == spec.state_keys
    for key, value in encoder.items():
        if key in loaded:
            torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)
    torch.testing.assert_close(loaded["fc_norm.weight"], torch.ones(spec.features), rtol=0, atol=0)
    torch.testing.assert_close(loaded["fc_norm.bias"], torch.zeros(spec.features), rtol=0, atol=0)
    keras_model = ktrain.build_model(config)
    state = keras_to_numpy_state(keras_model)
    for key, value in torch_model.state_dict().items():
        np.testing.assert_array_equal(state[key], value.numpy(), err_msg=key)
    left, right = images(2, size, seed=4), images(2, size, seed=5)
    with torch.no_grad():
        want = torch_model(nchw(left), nchw(right)).numpy()
    got = keras.ops.convert_to_numpy(keras_model({"left": left, "right": right}, training=False))
    record(f"{NAME} depth {depth} from its file, dual {head} logits 2x{size}px", got, want)
    assert got.shape == (2, 8) and np.abs(want).max() > 0.1
    return keras_model, (left, right), got


# on jax and tensorflow the default run keeps 32 px (every layer's kernels and the resampling); 224 px (the
# position embeddings' own size: 196 tokens), 48 px and the heads on maps (each checked on those backends on its
# own) are slow checks there
OTHER_BACKEND_SLOW = () if TORCH_BACKEND else pytest.mark.slow


@pytest.mark.parametrize("size", [pytest.param(224, marks=OTHER_BACKEND_SLOW), 32,
                                  pytest.param(48, marks=OTHER_BACKEND_SLOW)])
def test_published_file_loads_alike_in_both_trainers(monkeypatch, tmp_path, record, size):
    _logits_from_file(monkeypatch, tmp_path, DEPTH, size, record)


@pytest.mark.parametrize("head", [pytest.param(h, marks=OTHER_BACKEND_SLOW) for h in ("scm", "mldecoder")])
def test_heads_on_maps_from_the_file(monkeypatch, tmp_path, record, head):
    """The heads on feature maps get the patch tokens after the last block through fc_norm at every position."""
    _logits_from_file(monkeypatch, tmp_path, DEPTH, 32, record, head)


@pytest.mark.skipif(not TORCH_BACKEND, reason="saving is checked on the torch backend")
def test_saved_model_reloads(monkeypatch, tmp_path, record):
    keras_model, (left, right), logits = _logits_from_file(monkeypatch, tmp_path, 1, 32, record)
    keras_model.save(tmp_path / "model.keras")
    restored = keras.saving.load_model(tmp_path / "model.keras")
    again = keras.ops.convert_to_numpy(restored({"left": left, "right": right}, training=False))
    np.testing.assert_array_equal(again, logits)


@pytest.mark.skipif(not TORCH_BACKEND, reason="the convert command line is checked on the torch backend")
def test_convert_makes_a_keras_backbone_of_the_file_and_back(monkeypatch, tmp_path, capsys):
    """``keras_odir.convert RETFound_cfp_weights.pth retfound.keras``: a Keras backbone (read from the file's keys)
    whose features at 224 px are the torch backbone's from the same file; converted back, the backbone's keys;
    and the .keras as --weights gives the Keras trainer the same model as the .pth."""
    spec, path, _ = _small_file(monkeypatch, tmp_path, 1)
    assert convert_main([str(path), str(tmp_path / "retfound.keras")]) == 0
    backbone = keras.saving.load_model(tmp_path / "retfound.keras")
    torch_backbone = ttrain.build_model(TrainConfig(backbone=NAME, weights=str(path))).backbone.eval()
    x = images(2, spec.image_size, seed=6)
    with torch.no_grad():
        want = torch_backbone(nchw(x)).numpy()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(backbone(x, training=False)), want, rtol=0, atol=1e-5)
    assert convert_main([str(tmp_path / "retfound.keras"), str(tmp_path / "back.pth")]) == 0
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    assert set(back) == spec.state_keys
    for key, value in torch_backbone.state_dict().items():
        torch.testing.assert_close(back[key], value, rtol=0, atol=0)
    configs = [TrainConfig(backbone=NAME, weights=str(file), image_size=32, seed=2)
               for file in (path, tmp_path / "retfound.keras")]
    states = [keras_to_numpy_state(ktrain.build_model(config)) for config in configs]
    for key, value in states[0].items():
        np.testing.assert_array_equal(states[1][key], value, err_msg=key)
    assert capsys.readouterr().out.count("wrote ") == 2


@pytest.mark.skipif(not TORCH_BACKEND, reason="the trainers' command lines are checked on the torch backend")
def test_one_epoch_in_each_trainer_from_the_file(monkeypatch, tmp_path):
    """``--backbone retfound --weights PATH`` (the file as published) in both command lines: one epoch on the tiny
    synthetic set at 32 px, one block, backbone frozen (no --fine-tune); both start from the file's encoder and the
    same drawn head and see the same batches, so their losses agree."""
    _, path, _ = _small_file(monkeypatch, tmp_path, 1)
    data = generate(tmp_path / "set", patients=20, size=40, seed=3)
    histories = {}
    for name, module in (("torch", ttrain), ("keras", ktrain)):
        args = ["--data", str(data), "--run-dir", str(tmp_path / name), "--backbone", NAME, "--weights", str(path),
                "--image-size", "32", "--batch-size", "8", "--no-weighted-loss", "--experiment", "t",
                "--workers", "0", "--epochs", "1", "--seed", "1"]
        assert module.main(args) == 0
        (run,) = [p for p in (tmp_path / name).iterdir() if p.is_dir()]
        assert (run / "finished.json").is_file()
        histories[name] = pd.read_csv(run / "history.csv")
    for column in ("train_loss", "val_loss"):
        assert np.isfinite(histories["torch"][column][0]), column
        assert histories["keras"][column][0] == pytest.approx(histories["torch"][column][0], abs=1e-3), column


@pytest.mark.slow
@pytest.mark.parametrize("size", [224, 448])
def test_whole_network_from_its_file(monkeypatch, tmp_path, record, size):
    _logits_from_file(monkeypatch, tmp_path, BACKBONES[NAME].blocks[0], size, record)


@pytest.mark.skipif(not TORCH_BACKEND, reason="initialisation is checked on the torch backend")
def test_initialisation_as_timm():
    """Fresh Keras weights drawn as timm's VisionTransformer draws them: constants equal; random tensors of
    n >= 1000 values with the same mean and standard deviation within 6 standard errors."""
    spec = vit.at_depth(BACKBONES[NAME], 1)
    torch.manual_seed(0)
    want = timm_vision_transformer(spec).state_dict()
    keras.utils.set_random_seed(0)
    got = keras_to_numpy_state(build_backbone(spec, (32, 32, 3)))
    assert_initialised_alike(want, got)
