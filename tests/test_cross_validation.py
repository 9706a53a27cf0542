"""k-fold cross-validation: stratified folds, one fold per run, ``--fold all`` in both trainers with out-of-fold
probabilities, resume, and the refusals."""

import json
import os

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import KFold

import keras_odir.train as ktrain
import torch_odir.train as ttrain
from keras_odir.cli_backend import BACKEND as KERAS_BACKEND
from odir_core.cli_config import ConfigError
from odir_core.data.annotations import label_matrix, read_annotations
from odir_core.data.dataset import DualEyeDataset
from odir_core.data.folds import fold_assignment, load_folds
from odir_core.data.splits import study_split
from odir_core.data.synthetic import generate
from odir_core.evaluation import evaluate
from odir_core.evaluation.cross_validation import cross_validate, fold_runs
from odir_core.evaluation.inference import load_model, predict_dataset
from odir_core.training.config import TrainConfig
from odir_core.training.ranks import DistributedError
from reference_data import ANNOTATIONS, needs, require
from torch_odir.cli_backend import BACKEND as TORCH_BACKEND
from training_runs import only_run, tiny_train_args

FOLDS = 2


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn") / "set", patients=24, size=40, seed=5)


def _spread(y: np.ndarray, assignment: np.ndarray, folds: int) -> np.ndarray:
    """Per label: most minus fewest positives over the folds."""
    counts = np.array([y[assignment == k].sum(axis=0) for k in range(folds)])
    return counts.max(axis=0) - counts.min(axis=0)


@needs(ANNOTATIONS)
@pytest.mark.parametrize("folds", [3, 5, 10])
def test_folds_of_the_study_training_patients_are_disjoint_complete_and_stratified(folds):
    train, _ = study_split(read_annotations(require(ANNOTATIONS)))
    y = label_matrix(train)
    assignment = fold_assignment(train, folds, seed=0)
    assert set(assignment) == set(range(folds))  # every patient in one fold
    sizes = np.bincount(assignment, minlength=folds)
    assert np.abs(sizes - len(train) / folds).max() <= 0.05 * len(train) / folds  # sizes within 5% of N/K
    # every label's patients spread over the folds to within one patient; plain shuffled k-fold is not
    assert _spread(y, assignment, folds).max() <= 1
    plain = np.zeros(len(train), int)
    for k, (_, held_out) in enumerate(KFold(folds, shuffle=True, random_state=0).split(train)):
        plain[held_out] = k
    assert _spread(y, plain, folds).max() > 1
    assert (fold_assignment(train, folds, seed=0) == assignment).all()
    assert (fold_assignment(train, folds, seed=1) != assignment).any()


@pytest.mark.parametrize("values, message", [
    (dict(fold="1"), "give --folds too"),
    (dict(folds=3, fold="3"), "from 0 to 2"),
    (dict(folds=3, fold="-1"), "from 0 to 2"),
    (dict(folds=1), "folds = 1: must be a whole number from 2 to 100 or 0"),
])
def test_fold_options_are_checked(values, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**values)


def test_one_fold_trains_on_the_others_and_validates_on_it(data, tmp_path, capsys):
    assert ttrain.main(tiny_train_args(data, tmp_path, "--backbone", "resnet18", "--epochs", "1",
                                       "--folds", "3", "--fold", "1")) == 0
    run = only_run(tmp_path)
    pool, _ = study_split(read_annotations(data / "annotations.xlsx"))
    ids = load_folds(run / "folds.json")
    assert sorted(i for fold in ids for i in fold) == sorted(pool["ID"])
    out = capsys.readouterr().out
    assert f"Fold 1 of 3 (over the split's training patients): {len(pool) - len(ids[1])} training and {len(ids[1])} validation" in out


def _oof(folder):
    probs = pd.read_excel(folder / "oof" / "probs.xlsx")
    truth = pd.read_excel(folder / "oof" / "ground_truth.xlsx")
    return probs, truth


@pytest.mark.parametrize("trainer, backend", [(ktrain, KERAS_BACKEND), (ttrain, TORCH_BACKEND)], ids=["keras", "torch"])
def test_every_fold_then_out_of_fold_probabilities(data, tmp_path, trainer, backend, capsys):
    assert trainer.main(tiny_train_args(data, tmp_path, "--backbone", "resnet18", "--epochs", "1",
                                        "--folds", str(FOLDS), "--fold", "all")) == 0
    folder = only_run(tmp_path)
    assert (folder / "finished.json").is_file()
    pool, _ = study_split(read_annotations(data / "annotations.xlsx"))
    ids = load_folds(folder / "folds.json")
    probs, truth = _oof(folder)
    assert list(probs["ID"]) == list(pool["ID"]) == list(truth["ID"])
    assert (truth.iloc[:, 1:].to_numpy() == label_matrix(pool)).all()
    # each patient's probabilities come from the model of the fold that held it out, not from the other one
    by_id = probs.set_index("ID")
    for fold, fold_ids in enumerate(ids):
        (run,) = fold_runs(folder, fold)
        assert json.loads((run / "finished.json").read_text())["epochs"] == 1
        frame = pool.set_index("ID", drop=False).loc[fold_ids].reset_index(drop=True)
        dataset = DualEyeDataset(data, frame, image_size=32, train=False)
        own = predict_dataset(load_model(backend, run / f"best{backend.model_suffix}").predictor, dataset)
        np.testing.assert_allclose(by_id.loc[fold_ids].to_numpy(), own, rtol=0, atol=1e-6)
        (other,) = fold_runs(folder, 1 - fold)
        others = predict_dataset(load_model(backend, other / f"best{backend.model_suffix}").predictor, dataset)
        assert np.abs(others - own).max() > 1e-3
    assert "Out-of-fold (" in capsys.readouterr().out
    # thresholds tuned on the out-of-fold probabilities
    assert evaluate.main(backend, ["--probs", str(folder / "oof" / "probs.xlsx"), "--tune-thresholds",
                                   "--out", str(tmp_path / "eval")]) == 0
    assert (tmp_path / "eval" / "thresholds.json").is_file()


def test_resume_trains_only_the_missing_fold(data, tmp_path):
    args = tiny_train_args(data, tmp_path, "--backbone", "resnet18", "--epochs", "1", "--folds", str(FOLDS), "--fold", "all")
    assert ttrain.main(args) == 0
    folder = only_run(tmp_path)
    (kept,) = fold_runs(folder, 0)
    stamp = os.stat(kept / "best.pth").st_mtime_ns
    (lost,) = fold_runs(folder, 1)
    for path in sorted(lost.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    lost.rmdir()
    for name in ("finished.json", "oof/probs.xlsx", "oof/ground_truth.xlsx"):
        (folder / name).unlink()
    assert ttrain.main([*args, "--resume", str(folder)]) == 0
    assert os.stat(kept / "best.pth").st_mtime_ns == stamp
    assert len(fold_runs(folder, 1)) == 1 and (folder / "oof" / "probs.xlsx").is_file()
    assert ttrain.main([*args, "--resume", str(folder)]) == 2  # finished: nothing to resume


def _config(data, tmp_path, **changes):
    return TrainConfig(data=str(data), run_dir=str(tmp_path / "runs"), folds=FOLDS, image_size=32, **changes)


def test_a_new_cross_validation_that_fails_in_its_first_fold_leaves_nothing(data, tmp_path):
    def failing(config):
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        cross_validate(failing, TORCH_BACKEND, _config(data, tmp_path), log=lambda line: None)
    assert list((tmp_path / "runs").iterdir()) == []


def test_every_fold_is_refused_under_several_processes(data, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DistributedError, match="launch each fold on its own with --fold I"):
        cross_validate(lambda config: None, TORCH_BACKEND, _config(data, tmp_path), log=lambda line: None)
    assert not (tmp_path / "runs").exists()
