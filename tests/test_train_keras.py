"""keras_odir.train end to end on a tiny synthetic set: outputs, feature cache, resume, NaN stop, errors."""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import zipfile

import h5py
import keras
import numpy as np
import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import keras_odir.train as ktrain
from keras_odir.cli_backend import BACKEND
from keras_odir.parts import dual_parts
from odir_core.data.synthetic import generate
from odir_core.evaluation.inference import load_model
from odir_core.metric_table import STUDY_COLUMNS
from odir_core.model import provenance
from odir_core.training.config import TrainConfig
from odir_core.training.config_files import load_config
from reference_data import EXPERIMENTS
from training_runs import SMALL, only_run, tiny_train_args

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn") / "set", patients=20, size=40, seed=3)


def test_cli_writes_every_output(data, tmp_path, capsys):
    assert ktrain.main(tiny_train_args(data, tmp_path, "--fine-tune", "--epochs", "2", "--head", "v1", "--crop-size", "28",
                                       "--augment", "dual", "--scheduler", "cyclic", "--lr", "0.001")) == 0
    run = only_run(tmp_path)
    names = {p.name for p in run.iterdir()}
    assert {"config.toml", "best.keras", "last.keras", "train_results.xlsx", "history.csv", "tensorboard"} <= names
    assert "backup" not in names  # removed once the run has finished
    conf = load_config(run / "config.toml")
    assert (conf.head, conf.image_size, conf.crop_size, conf.normalize) == ("v1", 32, 28, True)
    assert conf.data == str(data)
    model = keras.saving.load_model(run / "best.keras", compile=False)
    assert model.input["left"].shape[1:] == (28, 28, 3) and model.output.shape[-1] == 8
    _check_checkpoints(run, data)

    results = pd.read_excel(run / "train_results.xlsx")
    study_file = EXPERIMENTS / "experiment_15" / "train_results.xlsx"
    expected = list(pd.read_excel(study_file).columns) if os.path.exists(study_file) else ["Unnamed: 0", *STUDY_COLUMNS]
    assert list(results.columns) == expected and len(results) == 2
    assert results["Unnamed: 0"].tolist() == [0, 1]
    history = pd.read_csv(run / "history.csv")
    assert np.allclose(history["train_loss"], results["train_loss"])
    assert {"val_challenge_final", "lr", "momentum"} <= set(history.columns)
    # CyclicLR from base_lr 0.001 to max_lr 0.1 over 10 epochs, momentum cycling 0.9 -> 0.8
    np.testing.assert_allclose(history["lr"], [0.001, 0.001 + 0.099 / 10], rtol=1e-6)
    np.testing.assert_allclose(history["momentum"], [0.9, 0.9 - 0.1 / 10], rtol=1e-6)

    acc = EventAccumulator(str(run / "tensorboard" / "Loss_val"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("Loss")] == pytest.approx(results["val_loss"].tolist(), rel=1e-6)
    for tag in ("Loss", "Kappa", "F1", "AUC", "FINAL"):
        for split in ("train", "val"):
            assert (run / "tensorboard" / f"{tag}_{split}").is_dir()
    out = capsys.readouterr().out
    assert "Run folder" in out and "Best epoch" in out


def _weight_groups(path) -> set[str]:
    with zipfile.ZipFile(path) as archive, archive.open("model.weights.h5") as fh, h5py.File(fh) as weights:
        return set(weights)


def _check_checkpoints(run, data):
    """best.keras: no optimizer state, about half of last.keras, the same weights as the best epoch's, loaded by
    predict; both record what they were trained on."""
    assert "optimizer" in _weight_groups(run / "last.keras") and "optimizer" not in _weight_groups(run / "best.keras")
    assert (run / "best.keras").stat().st_size < 0.6 * (run / "last.keras").stat().st_size
    best_epoch = int(pd.read_csv(run / "history.csv")["val_loss"].idxmin())
    for name in ("best.keras", "last.keras"):
        assert provenance.read(run / name) == {"data": str(data.resolve()), "synthetic": True,
                                               "run": str(run.resolve()), "experiment": "t",
                                               "epoch": best_epoch + 1 if name == "best.keras" else 2}
    loaded = load_model(BACKEND, run / "best.keras")
    assert loaded.training_note.startswith("trained on synthetic demo data, not for real photographs")
    x = np.random.default_rng(0).normal(size=(1, 28, 28, 3)).astype("float32")
    plain = keras.saving.load_model(run / "best.keras", compile=False)  # Keras' own loader, no odir code
    want = keras.ops.convert_to_numpy(keras.ops.sigmoid(plain({"left": x, "right": x}, training=False)))
    np.testing.assert_allclose(loaded.predictor.predict(x, x), want, atol=1e-5)


def test_validation_loss_is_unweighted_bce(data, tmp_path):
    """With the weighted training loss, val_loss is still torch's unweighted BCEWithLogitsLoss
    of the best model's validation logits."""
    import torch

    from odir_core.data.annotations import label_matrix, read_annotations, write_annotations
    from odir_core.data.dataset import DualEyeDataset
    from odir_core.data.splits import save_split
    from odir_core.labels import LABELS

    df = read_annotations(data / "annotations.xlsx")
    for i, label in enumerate(LABELS):  # every label positive in the training part
        df.loc[i, label] = 1
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "images").symlink_to(data / "images")
    write_annotations(df, folder / "annotations.xlsx")
    split = save_split(tmp_path / "split.json", df["ID"][:16].tolist(), df["ID"][16:].tolist())
    val_df = df.iloc[16:].reset_index(drop=True)

    assert ktrain.main(tiny_train_args(folder, tmp_path / "runs", *SMALL, "--epochs", "1", "--weighted-loss",
                                       "--fine-tune", "--split", str(split))) == 0
    run = only_run(tmp_path / "runs")
    model = keras.saving.load_model(run / "best.keras", compile=False)
    x, y = DualEyeDataset(folder, val_df, image_size=32, train=False).batch(range(len(val_df)))
    logits = keras.ops.convert_to_numpy(model(x, training=False))
    want = torch.nn.BCEWithLogitsLoss()(torch.from_numpy(logits), torch.from_numpy(label_matrix(val_df))).item()
    got = pd.read_excel(run / "train_results.xlsx")["val_loss"][0]
    assert got == pytest.approx(want, rel=1e-5)


def _head_weights(path):
    model = keras.saving.load_model(path, compile=False)
    return [w for layer in dual_parts(model).head.layers for w in layer.get_weights()]


def test_cached_features_give_the_same_head_as_the_full_model(data, tmp_path):
    base = TrainConfig(data=str(data), backbone="resnet18", image_size=32, batch_size=8, weights="none", epochs=2,
                       head="v0", lr=1e-4, scheduler="linear", linear_total_iters=2, experiment="c", patience=0)
    cached = ktrain.train(base.replace(run_dir=str(tmp_path / "cached")), log=lambda *_: None)
    full = ktrain.train(base.replace(run_dir=str(tmp_path / "full"), feature_cache=False), log=lambda *_: None)
    a, b = _head_weights(cached / "last.keras"), _head_weights(full / "last.keras")
    assert len(a) == 2
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=1e-5, rtol=0)
    assert not np.allclose(a[0], _head_weights_at_init(base), atol=1e-5)  # the head did train


def _head_weights_at_init(config):
    keras.utils.set_random_seed(config.seed)
    model = ktrain.build_model(config)
    return dual_parts(model).head.get_layer("head_0").get_weights()[0]


class _Interrupt(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def test_resume_after_interruption_ends_with_identical_weights(data, tmp_path, monkeypatch):
    extra = [*SMALL, "--fine-tune", "--augment", "dual", "--crop-size", "28", "--balanced-sampler", "--head", "v1",
             "--scheduler", "cyclic", "--cyclic-step-size-up", "2", "--cyclic-max-lr", "0.01", "--epochs", "2",
             "--patience", "0", "--lr", "0.002"]
    assert ktrain.main(tiny_train_args(data, tmp_path / "straight", *extra)) == 0
    straight = only_run(tmp_path / "straight")

    original = ktrain.training_callbacks
    monkeypatch.setattr(ktrain, "training_callbacks", lambda **kw: original(**kw) + [_Interrupt(0)])
    assert ktrain.main(tiny_train_args(data, tmp_path / "cut", *extra)) == 130
    cut = only_run(tmp_path / "cut")
    assert (cut / "backup").is_dir() and len(pd.read_excel(cut / "train_results.xlsx")) == 1
    monkeypatch.setattr(ktrain, "training_callbacks", original)
    assert ktrain.main(["--resume", str(cut)]) == 0

    a = keras.saving.load_model(straight / "last.keras", compile=False).get_weights()
    b = keras.saving.load_model(cut / "last.keras", compile=False).get_weights()
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=1e-6, rtol=0)
    pd.testing.assert_frame_equal(pd.read_csv(straight / "history.csv"), pd.read_csv(cut / "history.csv"),
                                  rtol=1e-5)
    assert ktrain.main(["--resume", str(cut)]) != 0  # a finished run has nothing to resume


def test_nan_loss_stops_and_keeps_the_best_checkpoint(data, tmp_path, capsys):
    assert ktrain.main(tiny_train_args(data, tmp_path, "--epochs", "4", "--lr", "1e30", "--no-feature-cache")) == 1
    run = only_run(tmp_path)
    err = capsys.readouterr().err
    assert "NaN or infinite" in err and "Traceback" not in err
    for name in ("best.keras", "last.keras"):  # never the diverged weights
        if (run / name).exists():
            model = keras.saving.load_model(run / name, compile=False)
            assert all(np.isfinite(keras.ops.convert_to_numpy(w)).all() for w in model.weights)
    results = pd.read_excel(run / "train_results.xlsx")
    assert len(results) < 4 and not np.isfinite(results["val_loss"].iloc[-1])


def test_missing_data_folder_is_one_clear_error(tmp_path, capsys):
    assert ktrain.main(["--data", str(tmp_path / "nope"), "--run-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a prepared folder" in err and "python -m odir_core.prepare" in err


@pytest.mark.slow  # 75 s; resume on torch runs in the default suite (here and tests/test_crash_resume.py)
def test_resume_on_the_jax_backend():
    """The resume test again, in a subprocess on the jax backend."""
    import subprocess
    import sys

    pytest.importorskip("jax")
    if keras.backend.backend() == "jax":
        pytest.skip("this process already runs the tests on jax")
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-o", "addopts=",
         "-k", "resume_after_interruption"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "1 passed" in proc.stdout


@pytest.mark.parametrize("precision,scheduler", [("bf16", "linear"), ("fp16", "cyclic")])
def test_mixed_precision_trains_and_keeps_float32_checkpoints(data, tmp_path, precision, scheduler):
    # fp16 wraps TorchSGD in Keras' LossScaleOptimizer; the cyclic schedule still sets its momentum
    assert ktrain.main(tiny_train_args(data, tmp_path, *SMALL, "--fine-tune", "--epochs", "1", "--precision", precision,
                                       "--scheduler", scheduler)) == 0
    run = only_run(tmp_path)
    assert load_config(run / "config.toml").precision == precision
    model = keras.saving.load_model(run / "best.keras", compile=False)
    assert {str(w.dtype) for w in model.weights} == {"float32"}
    x = {"left": np.zeros((1, 32, 32, 3), "float32"), "right": np.zeros((1, 32, 32, 3), "float32")}
    logits = model.predict_on_batch(x)
    assert str(logits.dtype) == "float32" and np.isfinite(logits).all()
    assert np.isfinite(pd.read_csv(run / "history.csv")["train_loss"]).all()
