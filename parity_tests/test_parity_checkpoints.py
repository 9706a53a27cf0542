"""Checkpoints written outside keras_odir: torchvision's ImageNet file and the study's own ``.pth``
(``torch.save(model.state_dict())`` of its dual model: ``backbone.*`` + ``classifier.*``). Every backend reads
torchvision's file and the study's v2 file into a model and a predictor; the study's other heads and the command
lines are checked by the session's own backend (the files are read into NumPy arrays alike on every backend)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from keras_odir.cli_backend import BACKEND
from keras_odir.convert import main as convert
from keras_odir.evaluate import main as keras_evaluate
from keras_odir.model import build_dual_model
from keras_odir.parts import dual_parts
from keras_odir.predict import main as keras_predict
from keras_odir.train import build_model as keras_build_model
from odir_core.data.synthetic import generate
from odir_core.evaluation.inference import load_model
from odir_core.training.config import TrainConfig
from odir_core.training.config_files import save_config
from parity_helpers import IS_CHILD, images, main_run_only, nchw

# The study's heads, written as its script wrote them (v0 a bare Linear, v1/v2 Sequentials).
STUDY_CLASSIFIERS = {
    "v0": lambda: nn.Linear(4096, 8),
    "v1": lambda: nn.Sequential(nn.Dropout(0.2), nn.Linear(4096, 8)),
    "v2": lambda: nn.Sequential(nn.Linear(4096, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 64), nn.ReLU(),
                                nn.Dropout(0.5), nn.Linear(64, 8)),
}


class StudyNet(nn.Module):
    """The study's dual model: torchvision resnet50 with fc = Identity, shared, then ``classifier``."""

    def __init__(self, head: str, backbone_state: dict):
        super().__init__()
        self.backbone = torchvision.models.resnet50(weights=None)
        self.backbone.fc = nn.Identity()
        self.backbone.load_state_dict(backbone_state)
        self.classifier = STUDY_CLASSIFIERS[head]()

    def forward(self, left, right):
        return self.classifier(torch.cat([self.backbone(left), self.backbone(right)], dim=1))


def _study_file(folder, head, backbone_state, seed=0):
    torch.manual_seed(seed)
    model = StudyNet(head, backbone_state).eval()
    path = folder / f"study_{head}.pth"
    torch.save(model.state_dict(), path)
    return model, path


def _torch_logits(model, left, right):
    with torch.no_grad():
        return model(nchw(left), nchw(right)).numpy()


def test_backbone_from_a_torchvision_checkpoint(tmp_path, backbone_state, record):
    path = tmp_path / "resnet50-11ad3fa6.pth"
    torch.save({**backbone_state, "fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}, path)
    model = build_dual_model(head="v0", weights=path, image_size=64)
    reference = torchvision.models.resnet50(weights=None)
    reference.fc = nn.Identity()
    reference.load_state_dict(backbone_state)
    x = images(2, 64, seed=5)
    with torch.no_grad():
        want = reference.eval()(nchw(x)).numpy()
    got = keras.ops.convert_to_numpy(dual_parts(model).backbone(x, training=False))
    # pooled features (not logits), compared relative to their largest value as in test_parity_forward
    record("torchvision checkpoint -> build_dual_model backbone (relative)", got, want, relative=True)


READ_ALIKE = "the file is read into NumPy arrays alike on every backend"


OTHER_STUDY_HEAD = main_run_only(READ_ALIKE + " (v2: on each)")


@pytest.mark.parametrize("head", [h if h == "v2" else pytest.param(h, marks=OTHER_STUDY_HEAD)
                                  for h in STUDY_CLASSIFIERS])
def test_study_checkpoint_converts(tmp_path, backbone_state, record, head):
    study, path = _study_file(tmp_path, head, backbone_state)
    assert convert([str(path), str(tmp_path / "study.keras")]) == 0
    model = keras.saving.load_model(tmp_path / "study.keras")
    left, right = images(2, 64, seed=6), images(2, 64, seed=7)
    got = keras.ops.convert_to_numpy(model({"left": left, "right": right}, training=False))
    record(f"study {head} .pth -> convert -> logits", got, _torch_logits(study, left, right))


@pytest.fixture(scope="module")
def study_run(tmp_path_factory, backbone_state):
    """A study v2 checkpoint, the training config it goes with, and a small synthetic prepared set."""
    root = tmp_path_factory.mktemp("study")
    data = generate(root / "data", patients=6, size=40, seed=1)
    config = TrainConfig(data=str(data), image_size=32, weights="none", head="v2", split="study")
    save_config(config, root / "experiment.toml")
    study, path = _study_file(root, "v2", backbone_state, seed=3)
    return study, path, root / "experiment.toml", data


def test_the_predictor_takes_a_study_checkpoint(study_run, record):
    study, path, train_config, _ = study_run
    predictor = load_model(BACKEND, path, train_config=train_config).predictor
    left, right = images(2, 32, seed=8), images(2, 32, seed=9)
    want = 1 / (1 + np.exp(-_torch_logits(study, left, right).astype(np.float64)))
    record("study v2 .pth -> keras_odir predictor probabilities", predictor.predict(left, right), want)


@main_run_only(READ_ALIKE + "; the predictor it makes: test_the_predictor_takes_a_study_checkpoint")
def test_evaluate_and_predict_take_a_study_checkpoint(study_run, tmp_path, capsys):
    _, path, train_config, data = study_run
    photos = sorted((data / "images").iterdir())[:2]
    assert keras_predict(["--model", str(path), "--train-config", str(train_config), *map(str, photos)]) == 0
    assert "predicted:" in capsys.readouterr().out
    assert keras_evaluate(["--model", str(path), "--train-config", str(train_config), "--split", "all",
                           "--out", str(tmp_path / "eval")]) == 0
    assert (tmp_path / "eval" / "metrics.json").is_file()


def test_a_study_checkpoint_without_its_config_says_what_to_pass(study_run, capsys):
    _, path, _, data = study_run
    photos = sorted((data / "images").iterdir())[:2]
    assert keras_predict(["--model", str(path), *map(str, photos)]) == 2
    assert "--train-config experiments/experiment_NN.toml" in capsys.readouterr().err


@main_run_only(READ_ALIKE)
def test_training_starts_from_a_study_checkpoint(study_run, backbone_state, tmp_path):
    study, path, _, _ = study_run
    ddp = tmp_path / "ddp.pth"  # the same weights as DistributedDataParallel would save them, wrapped
    torch.save({"model": {f"module.{k}": v for k, v in study.state_dict().items()}, "epoch": 9}, ddp)
    for source in (path, ddp):
        model = keras_build_model(TrainConfig(weights=str(source), head="v2", fine_tune=True, image_size=32))
        head = dual_parts(model).head
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(head.get_layer("head_3").kernel),
                                      study.classifier[3].weight.detach().numpy().T)
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(dual_parts(model).backbone.get_layer("layer4_2_bn3").moving_variance),
            backbone_state["layer4.2.bn3.running_var"].numpy())
    with pytest.raises(ValueError, match="pass --backbone resnet50 --head v2"):
        keras_build_model(TrainConfig(weights=str(path), head="v0", image_size=32))


@pytest.mark.skipif(IS_CHILD, reason="torch_odir does not depend on the Keras backend")
def test_torch_odir_takes_a_study_checkpoint(study_run, tmp_path, capsys):
    from torch_odir.cli_backend import BACKEND as TORCH
    from torch_odir.predict import main as torch_predict
    from torch_odir.train import build_model as torch_build_model

    study, path, train_config, data = study_run
    left, right = images(2, 32, seed=8), images(2, 32, seed=9)
    predictor = load_model(TORCH, path, train_config=train_config).predictor
    want = torch.sigmoid(torch.from_numpy(_torch_logits(study, left, right))).numpy()
    np.testing.assert_allclose(predictor.predict(left, right), want, rtol=0, atol=1e-6)
    photos = sorted((data / "images").iterdir())[:2]
    assert torch_predict(["--model", str(path), "--train-config", str(train_config), *map(str, photos)]) == 0
    assert "predicted:" in capsys.readouterr().out
    model = torch_build_model(TrainConfig(weights=str(path), head="v2", fine_tune=True))
    for key, value in study.state_dict().items():
        assert torch.equal(model.state_dict()[key.replace("classifier.", "head.")], value), key
    with pytest.raises(ValueError, match="pass --backbone resnet50 --head v2"):
        torch_build_model(TrainConfig(weights=str(path), head="v1"))
