"""torch_odir.train end to end on a tiny synthetic set: outputs, schedules, feature cache, resume."""

import numpy as np
import pandas as pd
import pytest
import torch

import torch_odir.train as ttrain
from odir_core.data.synthetic import generate
from odir_core.metric_table import STUDY_COLUMNS
from odir_core.training.config import TrainConfig
from odir_core.training.config_files import load_config
from torch_odir.model import DualResNet50
from training_runs import SMALL, only_run, tiny_train_args


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn") / "set", patients=20, size=40, seed=3)


def test_cli_writes_every_output_and_steps_linear_lr(data, tmp_path):
    assert ttrain.main(tiny_train_args(data, tmp_path, "--fine-tune", "--epochs", "2", "--head", "v2", "--crop-size", "28",
                                       "--augment", "independent", "--scheduler", "linear", "--lr", "0.01",
                                       "--linear-total-iters", "4")) == 0
    run = only_run(tmp_path)
    assert {"config.toml", "best.pth", "last.pth", "train_results.xlsx", "history.csv", "tensorboard"} <= {
        p.name for p in run.iterdir()}
    assert not (run / "backup").exists()
    conf = load_config(run / "config.toml")
    assert (conf.head, conf.image_size, conf.crop_size) == ("v2", 32, 28)
    saved = torch.load(run / "last.pth", weights_only=True)
    assert saved["config"]["head"] == "v2" and saved["epoch"] == 1
    # what it was trained on: the generated set (marked synthetic), this run, epoch counted from 1
    assert saved["trained_on"] == {"data": str(data.resolve()), "synthetic": True, "run": str(run.resolve()),
                                   "experiment": "t", "epoch": 2}
    DualResNet50("v2").load_state_dict(saved["state_dict"])
    results = pd.read_excel(run / "train_results.xlsx", index_col=0)
    assert list(results.columns) == STUDY_COLUMNS and len(results) == 2
    # LinearLR(start 1, end 0.1, total 4) stepped once per epoch: factors 1, 0.775
    np.testing.assert_allclose(pd.read_csv(run / "history.csv")["lr"], [0.01, 0.01 * 0.775], rtol=1e-12)


def test_cached_features_give_the_same_head_as_the_full_model(data, tmp_path):
    base = TrainConfig(data=str(data), image_size=32, batch_size=8, weights="none", epochs=2, head="v0",
                       lr=1e-4, experiment="c", patience=0)
    quiet = lambda *_: None  # noqa: E731
    cached = ttrain.train(base.replace(run_dir=str(tmp_path / "cached")), log=quiet)
    full = ttrain.train(base.replace(run_dir=str(tmp_path / "full"), feature_cache=False), log=quiet)
    a = torch.load(cached / "last.pth", weights_only=True)["state_dict"]
    b = torch.load(full / "last.pth", weights_only=True)["state_dict"]
    for key in ("head.0.weight", "head.0.bias"):
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0)
    torch.manual_seed(base.seed)
    assert not torch.allclose(a["head.0.weight"], DualResNet50("v0").head[0].weight, atol=1e-5)


def test_resume_after_interruption_ends_with_identical_weights(data, tmp_path, monkeypatch):
    extra = [*SMALL, "--fine-tune", "--augment", "dual", "--crop-size", "28", "--balanced-sampler", "--head", "v1",
             "--scheduler", "cyclic", "--cyclic-step-size-up", "2", "--cyclic-max-lr", "0.01", "--epochs", "2",
             "--patience", "0", "--lr", "0.002"]
    assert ttrain.main(tiny_train_args(data, tmp_path / "straight", *extra)) == 0
    straight = only_run(tmp_path / "straight")

    original = ttrain.early_stopping_state  # called after the epoch's backup is written

    def interrupt_after_first_epoch(losses):
        if len(losses) == 1:
            raise KeyboardInterrupt
        return original(losses)

    monkeypatch.setattr(ttrain, "early_stopping_state", interrupt_after_first_epoch)
    assert ttrain.main(tiny_train_args(data, tmp_path / "cut", *extra)) == 130
    monkeypatch.setattr(ttrain, "early_stopping_state", original)
    cut = only_run(tmp_path / "cut")
    assert ttrain.main(["--resume", str(cut)]) == 0

    a = torch.load(straight / "last.pth", weights_only=True)["state_dict"]
    b = torch.load(cut / "last.pth", weights_only=True)["state_dict"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0, msg=key)
    pd.testing.assert_frame_equal(pd.read_csv(straight / "history.csv"), pd.read_csv(cut / "history.csv"),
                                  rtol=1e-5)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_and_keeps_float32_checkpoints(data, tmp_path, precision):
    assert ttrain.main(tiny_train_args(data, tmp_path, *SMALL, "--fine-tune", "--epochs", "1", "--precision", precision,
                                       "--lr", "0.01")) == 0
    run = only_run(tmp_path)
    state = torch.load(run / "best.pth", weights_only=True)["state_dict"]
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float32}
    assert np.isfinite(pd.read_csv(run / "history.csv")["train_loss"]).all()
