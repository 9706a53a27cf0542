"""Weight conversion, ImageNet checkpoint loading and the convert CLI."""

from __future__ import annotations

import os

import keras_odir  # noqa: F401  (torch backend unless KERAS_BACKEND says otherwise)
import keras
import numpy as np
import pytest
import torch
import torchvision

from keras_odir.convert import main
from keras_odir.model import build_backbone, build_dual_model
from keras_odir.parts import dual_parts
from keras_odir.weights import WeightConversionError, keras_to_numpy_state, read_keras_model, torch_to_keras_state
from odir_core.model.checkpoints import (
    CheckpointNotFoundError,
    find_imagenet_checkpoint,
    load_imagenet_backbone_state,
    torch_hub_checkpoint_dir,
)
from torch_odir.model import DualResNet50, torch_load


def load_imagenet_state_dict(path=None, download=True):
    return load_imagenet_backbone_state(path, "resnet50", torch_load, download=download)


@pytest.fixture(scope="module")
def torchvision_state():
    torch.manual_seed(0)
    return torchvision.models.resnet50(weights=None).state_dict()


@pytest.fixture(scope="module")
def keras_backbone():
    return build_backbone()


def _assert_backbone_equals(keras_model, state):
    got = keras_to_numpy_state(keras_model)
    expected = {k: v for k, v in state.items() if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    assert set(k for k in got if not k.endswith("num_batches_tracked")) == set(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(got[key], value.numpy(), err_msg=key)


def test_bad_state_dict_lists_every_problem_and_assigns_nothing(torchvision_state, keras_backbone):
    state = {k: v for k, v in torchvision_state.items() if not k.startswith("fc.")}
    del state["layer2.1.bn2.running_var"]
    state["layer9.0.conv1.weight"] = torch.zeros(1)
    state["layer3.4.conv2.weight"] = torch.zeros(256, 256, 1, 1)
    before = keras.ops.convert_to_numpy(keras_backbone.get_layer("conv1").kernel).copy()
    with pytest.raises(WeightConversionError) as error:
        torch_to_keras_state(keras_backbone, state)
    message = str(error.value)
    assert "unknown keys (1): layer9.0.conv1.weight" in message
    assert "missing keys (1): layer2.1.bn2.running_var" in message
    assert "mis-shaped keys (1): layer3.4.conv2.weight: (256, 256, 1, 1)" in message
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(keras_backbone.get_layer("conv1").kernel), before)


def test_torchvision_fc_is_an_unknown_key_for_the_backbone(torchvision_state, keras_backbone):
    with pytest.raises(WeightConversionError, match=r"unknown keys \(2\): fc.weight, fc.bias"):
        torch_to_keras_state(keras_backbone, torchvision_state)


def test_conv_and_dense_layouts_are_transposed(torchvision_state, keras_backbone):
    torch_to_keras_state(keras_backbone, {k: v for k, v in torchvision_state.items() if not k.startswith("fc.")})
    oihw = torchvision_state["layer1.0.conv2.weight"].numpy()
    hwio = keras.ops.convert_to_numpy(keras_backbone.get_layer("layer1_0_conv2").kernel)
    assert hwio[2, 0, 5, 7] == oihw[7, 5, 2, 0]
    torch.manual_seed(1)
    torch_model = DualResNet50("v0")
    dual = torch_to_keras_state(build_dual_model(head="v0", image_size=32), torch_model.state_dict())
    kernel = keras.ops.convert_to_numpy(dual_parts(dual).head.get_layer("head_0").kernel)
    np.testing.assert_array_equal(kernel, torch_model.head[0].weight.detach().numpy().T)


def test_checkpoint_folder_is_torch_hubs(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCH_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert str(torch_hub_checkpoint_dir()) == str(tmp_path / "cache" / "torch" / "hub" / "checkpoints")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert str(torch_hub_checkpoint_dir()) == f"{torch.hub.get_dir()}/checkpoints"


@pytest.mark.parametrize("name", ["resnet50-11ad3fa6.pth", "resnet50-0676ba61.pth"])
def test_imagenet_weights_from_torch_home(tmp_path, monkeypatch, torchvision_state, name):
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(torchvision_state, folder / name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert find_imagenet_checkpoint() == folder / name
    _assert_backbone_equals(build_backbone(weights="imagenet"), torchvision_state)
    torch_model = DualResNet50("v0", weights="imagenet")
    for key, value in torch_model.backbone.state_dict().items():
        assert torch.equal(value, torchvision_state[key]), key


def test_imagenet_weights_from_explicit_path(tmp_path, torchvision_state):
    path = tmp_path / "my_resnet50.pth"
    torch.save(torchvision_state, path)
    model = build_dual_model(head="v1", weights=path, image_size=32)
    _assert_backbone_equals(model.get_layer("backbone"), torchvision_state)


def test_missing_imagenet_checkpoint_names_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(CheckpointNotFoundError) as error:
        load_imagenet_state_dict(download=False)
    message = str(error.value)
    assert "resnet50-11ad3fa6.pth" in message
    assert str(tmp_path / "hub" / "checkpoints") in message
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        load_imagenet_state_dict(tmp_path / "nowhere.pth", download=False)
    with pytest.raises(CheckpointNotFoundError, match="resnet50-11ad3fa6.pth"):
        load_imagenet_state_dict(tmp_path, download=False)


def test_corrupt_checkpoint_is_reported(tmp_path):
    path = tmp_path / "resnet50-11ad3fa6.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointNotFoundError, match="not a readable PyTorch checkpoint"):
        load_imagenet_state_dict(path)


def test_cli_torch_to_keras_and_back(tmp_path):
    torch.manual_seed(2)
    torch_model = DualResNet50("v1").eval()
    src = tmp_path / "model.pth"
    torch.save({"epoch": 3, "model_state_dict": torch_model.state_dict()}, src)
    assert main([str(src), str(tmp_path / "model.keras")]) == 0
    keras_model = keras.saving.load_model(tmp_path / "model.keras")
    left = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype("float32")
    right = np.random.default_rng(1).standard_normal((2, 32, 32, 3)).astype("float32")
    with torch.no_grad():
        want = torch_model(torch.from_numpy(left.transpose(0, 3, 1, 2)),
                           torch.from_numpy(right.transpose(0, 3, 1, 2))).numpy()
    got = keras.ops.convert_to_numpy(keras_model({"left": left, "right": right}))
    np.testing.assert_allclose(got, want, atol=1e-4)

    assert main([str(tmp_path / "model.keras"), str(tmp_path / "back.pth")]) == 0
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    reloaded = DualResNet50("v1")
    reloaded.load_state_dict(back, strict=True)
    for key, value in torch_model.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(back[key], value), key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back.pth", "model.keras", "model.pth"]


def test_cli_refuses_to_overwrite_and_bad_requests(tmp_path, capsys):
    src = tmp_path / "model.pth"
    torch.save(DualResNet50("v0").state_dict(), src)
    (tmp_path / "taken.keras").write_text("keep me")
    assert main([str(src), str(tmp_path / "taken.keras")]) == 2
    assert "--force" in capsys.readouterr().err
    assert (tmp_path / "taken.keras").read_text() == "keep me"
    assert main([str(src), str(tmp_path / "x.keras"), "--head", "v2"]) == 2
    assert "holds head v0" in capsys.readouterr().err
    assert main([str(src), str(tmp_path / "x.h5")]) == 2
    assert ".pth/.pt and .keras" in capsys.readouterr().err
    assert main([str(tmp_path / "absent.pth"), str(tmp_path / "x.keras")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x.keras").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(flag in out for flag in ("--backbone", "--fine-tune", "--no-fine-tune", "--config"))


def test_cli_refuses_another_backbone_and_reads_its_flags_from_a_config_file(tmp_path, capsys):
    src = tmp_path / "model.pth"
    torch.save(DualResNet50("v0").state_dict(), src)
    assert main([str(src), str(tmp_path / "x.keras"), "--backbone", "resnet18"]) == 2
    assert "holds backbone resnet50, not the requested resnet18" in capsys.readouterr().err
    config = tmp_path / "convert.toml"
    config.write_text('backbone = "resnet50"\nhead = "v0"\nfine_tune = false\nimage_size = 64\n')
    assert main(["--config", str(config), str(src), str(tmp_path / "x.keras")]) == 0
    model = read_keras_model(tmp_path / "x.keras")
    assert model.inputs[0].shape[1:3] == (64, 64)
    assert not dual_parts(model).backbone.trainable  # fine_tune = false: a frozen backbone
    config.write_text('backbone = "resnet18"\n')
    assert main(["--config", str(config), str(src), str(tmp_path / "y.keras")]) == 2
    assert "not the requested resnet18" in capsys.readouterr().err
    config.write_text('freeze_backbone = true\n')
    with pytest.raises(SystemExit):
        main(["--config", str(config), str(src), str(tmp_path / "y.keras")])
    assert "unknown key(s) freeze_backbone" in capsys.readouterr().err


@pytest.mark.parametrize("name,content,expect", [
    ("text.pth", b"just some text\n", "not a readable PyTorch checkpoint"),
    ("garbage.pth", b"garbage\n", "not a complete zip archive or pickle"),  # torch's own message: 8 lines
    ("empty.pth", b"", "not a readable PyTorch checkpoint"),
    ("text.keras", b"just some text\n", "not a .keras model"),
    ("fake.keras", None, "damaged or foreign .keras model"),  # a zip archive that holds no model
])
def test_cli_garbage_input_is_one_line_and_exit_2(tmp_path, capsys, name, content, expect):
    import zipfile

    src = tmp_path / name
    if content is None:
        with zipfile.ZipFile(src, "w") as archive:
            archive.writestr("readme.txt", "no model here")
    else:
        src.write_bytes(content)
    dst = tmp_path / ("out.keras" if name.endswith(".pth") else "out.pth")
    assert main([str(src), str(dst)]) == 2
    err = capsys.readouterr().err
    assert expect in err and str(src) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # nothing written, no temporary file left


def test_cli_truncated_checkpoint_is_one_line_and_exit_2(tmp_path, capsys):
    full = tmp_path / "full.pth"
    torch.save(DualResNet50("v0").state_dict(), full)
    src = tmp_path / "cut.pth"
    src.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    assert main([str(src), str(tmp_path / "out.keras")]) == 2
    err = capsys.readouterr().err
    assert "not a readable PyTorch checkpoint" in err and "Traceback" not in err
    assert not (tmp_path / "out.keras").exists()


def test_cli_output_keeps_the_umask(tmp_path):
    src = tmp_path / "model.pth"
    torch.save(DualResNet50("v0").state_dict(), src)
    assert main([str(src), str(tmp_path / "model.keras")]) == 0
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "model.keras").stat().st_mode & 0o777 == 0o666 & ~mask


def test_conversion_keeps_what_the_model_was_trained_on(tmp_path):
    from odir_core.model import provenance

    record = provenance.at_epoch(provenance.training_record("data/demo", True, "runs/demo-1", "demo"), 3)
    src = tmp_path / "best.pth"
    torch.save({"state_dict": DualResNet50("v0").state_dict(), provenance.TORCH_KEY: record}, src)
    assert main([str(src), str(tmp_path / "best.keras")]) == 0
    assert provenance.read(tmp_path / "best.keras") == record
    assert main([str(tmp_path / "best.keras"), str(tmp_path / "back.pth")]) == 0
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    assert back[provenance.TORCH_KEY] == record
    assert provenance.describe(provenance.read(tmp_path / "back.pth", torch.load)).startswith(provenance.SYNTHETIC_NOTE)
