"""What a model was trained on: the record a run makes, where checkpoints keep it, and the line users read."""

import shutil
import zipfile

import keras
import numpy as np
import pytest
import torch

from keras_odir.weights import torch_load
from odir_core.data.synthetic import SYNTHETIC_MARKER, demo_dataset, generate, is_synthetic
from odir_core.model import provenance
from odir_core.training.config import TrainConfig
from odir_core.training.run import setup_run

RECORD = {"data": "/data/odir5k", "synthetic": False, "run": "/runs/experiment_15-20250101-120000",
          "experiment": "experiment_15", "epoch": 42}


def test_lines_users_read():
    assert provenance.describe(RECORD) == ("trained on /data/odir5k (run /runs/experiment_15-20250101-120000, "
                                           "experiment experiment_15, epoch 42)")
    synthetic = provenance.describe({**RECORD, "synthetic": True, "data": "/x/demo_300_128_0"})
    assert synthetic.startswith("trained on synthetic demo data, not for real photographs (/x/demo_300_128_0; run ")
    assert provenance.describe(None) == "training data unknown: the model file does not record it"


def test_epoch_is_counted_from_one_as_in_the_log():
    assert provenance.at_epoch({"data": "d"}, 0) == {"data": "d", "epoch": 1}


def test_keras_archive_keeps_the_record_when_copied_and_still_loads(tmp_path):
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.save(tmp_path / "m.keras")
    provenance.write_keras(tmp_path / "m.keras", RECORD)
    (tmp_path / "elsewhere").mkdir()
    copy = shutil.copy(tmp_path / "m.keras", tmp_path / "elsewhere" / "renamed.keras")
    assert provenance.read(copy) == RECORD
    loaded = keras.saving.load_model(copy, compile=False)
    np.testing.assert_array_equal(loaded.get_weights()[0], model.get_weights()[0])
    with zipfile.ZipFile(copy) as archive:
        assert provenance.KERAS_ENTRY in archive.namelist()
    model.save(tmp_path / "plain.keras")
    assert provenance.read(tmp_path / "plain.keras") is None


def test_torch_checkpoint_record(tmp_path):
    state = {"w": torch.zeros(2)}
    torch.save({"state_dict": state, "epoch": 41, provenance.TORCH_KEY: RECORD}, tmp_path / "best.pth")
    torch.save(state, tmp_path / "study.pth")
    (tmp_path / "damaged.pth").write_bytes(b"not a checkpoint")
    assert provenance.read(tmp_path / "best.pth", torch_load) == RECORD
    assert provenance.read(tmp_path / "study.pth", torch_load) is None
    assert provenance.read(tmp_path / "damaged.pth", torch_load) is None


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn") / "set", patients=12, size=32, seed=1, workers=1)


def test_a_run_on_generated_images_is_recorded_as_synthetic(generated, tmp_path):
    assert is_synthetic(generated)
    setup = setup_run(TrainConfig(data=str(generated), run_dir=str(tmp_path / "runs"), experiment="x"),
                      tmp_path / "no_backup", log=lambda *_: None)
    assert setup.trained_on == {"data": str(generated.resolve()), "synthetic": True,
                                "run": str(setup.run_dir.resolve()), "experiment": "x"}


def test_a_run_on_a_prepared_folder_is_recorded_with_its_path(generated, tmp_path):
    real = shutil.copytree(generated, tmp_path / "odir5k")
    (real / SYNTHETIC_MARKER).unlink()
    setup = setup_run(TrainConfig(data=str(real), run_dir=str(tmp_path / "runs")), tmp_path / "no_backup",
                      log=lambda *_: None)
    assert setup.trained_on["synthetic"] is False and setup.trained_on["data"] == str(real.resolve())
    assert provenance.describe(provenance.at_epoch(setup.trained_on, 2)).startswith(f"trained on {real.resolve()} (run ")


def test_demo_sets_made_before_marking_are_marked_when_used(tmp_path):
    folder = demo_dataset(tmp_path, patients=3, size=32)
    (folder / SYNTHETIC_MARKER).unlink()
    assert demo_dataset(tmp_path, patients=3, size=32) == folder and is_synthetic(folder)
