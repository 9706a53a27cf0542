"""A last training batch of one pair and data sets too small to train on.

A training epoch leaves out a last batch of one pair (BatchNorm in training mode cannot normalise it), the same in
both trainers and over several processes (odir_core.training.ranks.training_rows); validation and evaluation batches of
one are kept. A data set or split too small to train on is one line naming it and how many patients it needs.
"""

import numpy as np
import pytest

import keras_odir.callbacks as kcallbacks
import keras_odir.train as ktrain
import torch_odir.train as ttrain
from keras_odir.data import feature_batches
from odir_core.data.annotations import read_annotations
from odir_core.data.dataset import EpochOrder
from odir_core.data.splits import save_split
from odir_core.data.synthetic import generate
from odir_core.training.ranks import DistributedError, check_batch_split
from torch_odir.data import EpochBatchSampler

# where each trainer computes an epoch's record from the epoch's outputs
RECORDS = {"torch": (ttrain, ttrain), "keras": (ktrain, kcallbacks)}


def small_run_args(data, split, run_dir) -> list[str]:
    """A fine-tuned run as small as it gets: ResNet18, 32 px, random weights, batch 8, one epoch."""
    return ["--data", str(data), "--split", str(split), "--run-dir", str(run_dir), "--fine-tune",
            "--backbone", "resnet18", "--weights", "none", "--image-size", "32", "--batch-size", "8",
            "--epochs", "1", "--workers", "0", "--train-metrics", "epoch", "--experiment", "small"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """42 patients: the split file puts 33 in training (batches of 8, 8, 8, 8, 1) and 9 in validation (8, 1)."""
    root = generate(tmp_path_factory.mktemp("small") / "set", patients=42, size=32, seed=4)
    ids = read_annotations(root / "annotations.xlsx", exclude_special=False)["ID"].tolist()
    split = save_split(root.parent / "split.json", ids[:33], ids[33:])
    return root, split, ids


def test_training_batches_leave_out_a_last_batch_of_one_pair():
    order = EpochOrder(33, seed=1)
    sampler = EpochBatchSampler(order, 8, training=True)
    keras_batches = feature_batches(np.arange(33, dtype=np.float32)[:, None], np.zeros((33, 8), np.float32), 8,
                                    seed=1, shuffle=True, epochs=3, training=True)
    assert len(sampler) == keras_batches.steps_per_epoch == 4 and keras_batches.sizes == [8, 8, 8, 8]
    left_out = set()
    for epoch in range(3):
        sampler.set_epoch(epoch)
        torch_rows = [key[0] for batch in sampler for key in batch]
        keras_rows = np.concatenate([keras_batches[4 * epoch + step][0][:, 0] for step in range(4)]).astype(int)
        np.testing.assert_array_equal(torch_rows, order(epoch)[:32])
        np.testing.assert_array_equal(keras_rows, order(epoch)[:32])
        left_out.add(int(order(epoch)[32]))
    assert len(left_out) > 1  # the shuffle leaves out another patient each epoch


def test_evaluation_batches_and_batches_of_size_one_are_kept():
    assert [len(b) for b in EpochBatchSampler(EpochOrder(33, shuffle=False), 8)] == [8, 8, 8, 8, 1]
    evaluation = feature_batches(np.zeros((33, 4), np.float32), np.zeros((33, 8), np.float32), 8)
    assert evaluation.sizes == [8, 8, 8, 8, 1] and evaluation.steps_per_epoch == 5
    assert [len(b) for b in EpochBatchSampler(EpochOrder(3), 1, training=True)] == [1, 1, 1]


def test_processes_split_the_batches_one_process_trains_on():
    check_batch_split(33, 8, 2)  # 8, 8, 8, 8 (and one pair left out)
    check_batch_split(17, 8, 3)  # 8, 8
    with pytest.raises(DistributedError, match="a training batch of 2 patient"):
        check_batch_split(18, 8, 3)  # 8, 8, 2


@pytest.mark.parametrize("trainer", sorted(RECORDS))
def test_fine_tuned_run_with_a_last_training_batch_of_one(data, tmp_path, monkeypatch, trainer):
    root, split, _ = data
    module, where = RECORDS[trainer]
    record, seen = where.epoch_record, []

    def counting(loss, outputs, *rest):
        def counted():
            y, train_logits, val_logits = outputs()
            seen.append((len(y), len(train_logits), len(val_logits)))
            return y, train_logits, val_logits
        return record(loss, counted, *rest)

    monkeypatch.setattr(where, "epoch_record", counting)
    assert module.main(small_run_args(root, split, tmp_path)) == 0
    assert seen == [(32, 32, 9)]  # 4 training batches of 8; both validation batches, the one of one pair too


def _one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.parametrize("trainer", sorted(RECORDS))
@pytest.mark.parametrize("patients,found", [
    (1, "1 patient(s) without a special image"),
    (2, "split study leaves 1 training and 1 validation patient(s)"),
])
def test_a_data_set_too_small_for_the_study_split_is_one_line(tmp_path, capsys, trainer, patients, found):
    root = generate(tmp_path / "set", patients=patients, size=32, seed=5)
    code = RECORDS[trainer][0].main(small_run_args(root, "study", tmp_path / "runs"))
    line = _one_error_line(capsys)
    assert code == 2
    assert str(root) in line and found in line
    assert "training with the study split needs at least 3 patients (2 to train on, 1 to validate)" in line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("trainer", sorted(RECORDS))
def test_a_split_file_with_one_training_patient_is_one_line(data, tmp_path, capsys, trainer):
    root, _, ids = data
    split = save_split(tmp_path / "one.json", ids[:1], ids[1:3])
    code = RECORDS[trainer][0].main(small_run_args(root, split, tmp_path / "runs"))
    line = _one_error_line(capsys)
    assert code == 2
    assert line == (f"error: {root}: split {split} leaves 1 training and 2 validation patient(s); training needs "
                    f"at least 2 training patients and 1 validation patient: list more patients in {split}")
