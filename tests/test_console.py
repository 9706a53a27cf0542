"""One story in console, history.csv and TensorBoard for both trainers: the same epoch line (fields,
numbering from 1, under 160 characters), epochs from 1 in history.csv and the TensorBoard steps,
the same TensorBoard tags, and an early-stopping line only when a run stops before its last epoch."""

import contextlib
import io
import math
import os
import re

os.environ.setdefault("KERAS_BACKEND", "torch")

import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import keras_odir.train as ktrain
import torch_odir.train as ttrain
from odir_core.data.synthetic import generate
from odir_core.metric_table import METRICS, PER_SPLIT, SPLITS, UNSPLIT
from odir_core.training.console import duration, early_stopping_line, epoch_line
from training_runs import SMALL, only_run, tiny_train_args

TRAINERS = {"keras": ktrain.main, "torch": ttrain.main}
# ResNet-18 at learning rate 0.1 overshoots: the validation loss of this set rises after epoch 1 (2.5 -> 5.5)
OVERSHOOTING = (*SMALL, "--lr", "0.1")
EPOCH_LINE = re.compile(r"^Epoch (\d+)/(\d+)  loss ")
NUMBER = re.compile(r"(?<![\w.])-?(\d+\.?\d*(e-?\d+)?|nan)\b")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn") / "set", patients=20, size=40, seed=3)


def _run(trainer, data, run_root, *extra):
    """Run a trainer; returns (its console output, stdout and stderr, split into screen lines; run folder)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert TRAINERS[trainer](tiny_train_args(data, run_root, *OVERSHOOTING, *extra)) == 0
    text = ANSI.sub("", out.getvalue() + err.getvalue()).replace("\b", "")
    return [line for line in re.split(r"[\r\n]", text) if line.strip()], only_run(run_root)


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """Both trainers, 3 epochs with patience 1 on a set whose validation loss rises after epoch 1."""
    return {name: _run(name, data, tmp_path_factory.mktemp(name), "--epochs", "3", "--patience", "1")
            for name in TRAINERS}


def _epoch_lines(lines):
    return [line for line in lines if EPOCH_LINE.match(line)]


def test_epoch_line_names_every_value_and_fits_160_characters():
    record = {"train_loss": 0.41234, "val_loss": 0.39, "val_kappa": -0.1234, "val_f1": 0.4567, "val_auc": 0.789,
              "val_final_score": 0.4561, "val_challenge_final": 0.61234, "lr": 0.00081234, "momentum": 0.8875}
    line = epoch_line(100, 100, record)
    assert line == ("Epoch 100/100  loss 0.4123 | val loss 0.3900 kappa -0.123 F1 0.457 AUC 0.789 final 0.456 "
                    "challenge final 0.612 | lr 0.000812 momentum 0.887")
    assert len(line) <= 160
    # a diverged epoch has no metrics: only what it has
    assert epoch_line(3, 8, {"train_loss": math.nan, "val_loss": math.nan, "lr": 0.01, "momentum": 0.9}) == (
        "Epoch 3/8  loss nan | val loss nan | lr 0.01 momentum 0.9")


def test_early_stopping_line_only_before_the_last_scheduled_epoch():
    assert early_stopping_line(8, 8, 3) is None  # patience ran out in the last epoch: nothing was stopped
    assert early_stopping_line(5, 8, 3) == "Epoch 5/8: early stopping (no lower validation loss in the last 3 epochs)"
    assert early_stopping_line(2, 8, 1).endswith("in the last 1 epoch)")


def test_both_trainers_print_the_same_compact_epoch_lines(runs):
    shapes = {}
    for name, (lines, run) in runs.items():
        epoch_lines = _epoch_lines(lines)
        history = pd.read_csv(run / "history.csv")
        assert [int(EPOCH_LINE.match(line)[1]) for line in epoch_lines] == history["epoch"].tolist() == [1, 2]
        for line, loss, val_loss, final in zip(epoch_lines, history["train_loss"], history["val_loss"],
                                               history["val_challenge_final"]):
            assert f"loss {loss:.4f} | val loss {val_loss:.4f} " in line
            assert f"challenge final {final:.3f}" in line
        assert max(len(line) for line in lines) <= 160, max(lines, key=len)  # progress bars included
        shapes[name] = [NUMBER.sub("#", line) for line in epoch_lines]
    assert shapes["keras"] == shapes["torch"]
    # every value the metric table puts on the console, in its order (the exact line: test_metric_table.py)
    labels = [m.label for m in METRICS if "val" in m.console and m.key != "loss"]
    unsplit = [m.label for m in METRICS if None in m.console]
    assert " ".join(f"{label} #" for label in labels) + " | " + " ".join(f"{label} #" for label in unsplit) \
        in shapes["keras"][0]


def test_both_trainers_say_the_same_when_stopping_early(runs):
    for name, (lines, _) in runs.items():
        stops = [line for line in lines if "early stopping" in line]
        assert stops == ["Epoch 2/3: early stopping (no lower validation loss in the last 1 epoch)"], name


def test_history_epochs_and_tensorboard_steps_count_from_1(runs):
    for name, (_, run) in runs.items():
        history = pd.read_csv(run / "history.csv")
        assert history["epoch"].tolist() == [1, 2], name
        assert pd.read_excel(run / "train_results.xlsx")["Unnamed: 0"].tolist() == [0, 1]  # the study's index
        for folder, tag, key in [("Loss_val", "Loss", "val_loss"), ("Challenge_FINAL_val", "Challenge_FINAL",
                                                                    "val_challenge_final"), ("momentum", "momentum",
                                                                                             "momentum")]:
            acc = EventAccumulator(str(run / "tensorboard" / folder))
            acc.Reload()
            events = acc.Scalars(tag)
            assert [e.step for e in events] == history["epoch"].tolist(), (name, tag)
            assert [e.value for e in events] == pytest.approx(history[key].tolist(), rel=1e-6), (name, tag)


def _tensorboard_tags(run):
    tags = set()
    for folder in sorted((run / "tensorboard").iterdir()):
        acc = EventAccumulator(str(folder))
        acc.Reload()
        tags |= {(folder.name, tag) for tag in acc.Tags()["scalars"]}
    return tags


def test_both_trainers_log_the_same_tensorboard_tags(runs):
    keras_tags, torch_tags = (_tensorboard_tags(runs[name][1]) for name in ("keras", "torch"))
    assert keras_tags == torch_tags
    # every row of the metric table (the literal tags: test_metric_table.py)
    expected = {(f"{m.tag}_{split}", m.tag) for m in PER_SPLIT for split in SPLITS} | {(m.tag, m.tag) for m in UNSPLIT}
    assert keras_tags == expected


@pytest.mark.parametrize("trainer", TRAINERS)
def test_no_early_stopping_line_when_patience_runs_out_in_the_last_epoch(data, tmp_path, trainer):
    lines, run = _run(trainer, data, tmp_path, "--epochs", "2", "--patience", "1")
    val_loss = pd.read_csv(run / "history.csv")["val_loss"]
    assert val_loss[1] >= val_loss[0]  # patience 1 is exhausted by epoch 2, the last one
    assert not [line for line in lines if "early stopping" in line]
    assert len(_epoch_lines(lines)) == 2


@pytest.mark.parametrize("seconds, shown", [(2.46, "2.5 s"), (59.9, "59.9 s"),
                                            (60.0, "1.0 min"), (5 * 60 + 33, "5.5 min")])
def test_duration_never_hides_a_short_run(seconds, shown):
    assert duration(seconds) == shown
