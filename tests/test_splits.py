"""odir_core.data.splits: the study's exact split, iterative stratification, test sets, split files."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

from odir_core.data.annotations import COLUMNS, label_matrix, read_annotations
from odir_core.data.layouts import OIA
from odir_core.data.splits import (
    SplitError,
    iterative_stratification,
    load_split,
    load_test_sets,
    save_split,
    stratified_split,
    study_split,
)
from odir_core.labels import LABELS
from reference_data import ANNOTATIONS as REAL_XLSX
from reference_data import EXPERIMENTS, require



@pytest.fixture(scope="module")
def real_all():
    require(REAL_XLSX)
    return read_annotations(REAL_XLSX, exclude_special=False)


@pytest.fixture(scope="module")
def real(real_all):
    return read_annotations(REAL_XLSX)


# ---------------------------------------------------------------- study split


@pytest.mark.parametrize("k", range(16))
def test_study_split_reproduces_every_experiment(real_all, k):
    truth = pd.read_excel(require(EXPERIMENTS / f"experiment_{k}" / "ground_truth.xlsx"))
    train, val = study_split(real_all)
    assert len(val) == 698 and len(train) == 3490 - 698
    assert val["ID"].tolist() == truth["ID"].tolist()
    np.testing.assert_array_equal(val[list(LABELS)].to_numpy(), truth[list(LABELS)].to_numpy())
    assert not set(train["ID"]) & set(val["ID"])


def test_study_split_same_with_specials_already_dropped(real_all, real):
    assert len(real) == 3490
    a_train, a_val = study_split(real_all)
    b_train, b_val = study_split(real)
    assert a_val["ID"].tolist() == b_val["ID"].tolist()
    assert a_train["ID"].tolist() == b_train["ID"].tolist()
    assert list(a_val.columns) == COLUMNS and isinstance(a_val.index, pd.RangeIndex)


# ---------------------------------------------------------------- stratification


def test_iterative_stratification_by_hand():
    # Two examples of each rare label and four of a common one: a 50/50 split
    # must put one of each rare pair in each half.
    y = np.zeros((8, 3), dtype=int)
    y[[0, 1], 0] = 1
    y[[2, 3], 1] = 1
    y[4:, 2] = 1
    for seed in range(5):
        part = iterative_stratification(y, [0.5, 0.5], seed=seed)
        for label in range(3):
            assert np.bincount(part[y[:, label] == 1], minlength=2).tolist() == [y[:, label].sum() // 2] * 2


def test_iterative_stratification_assigns_unlabelled_rows():
    y = np.zeros((10, 2), dtype=int)
    y[:4, 0] = 1
    part = iterative_stratification(y, [0.6, 0.4], seed=0)
    assert np.bincount(part, minlength=2).tolist() == [6, 4]


@pytest.mark.parametrize("bad", [[0.5, 0.6], [1.2, -0.2]])
def test_iterative_stratification_rejects_bad_proportions(bad):
    with pytest.raises(SplitError, match="proportions"):
        iterative_stratification(np.ones((4, 2)), bad)


def prevalence_gap(parts, y_all) -> float:
    """Mean absolute gap between each part's per-label prevalence and the overall one."""
    overall = y_all.mean(axis=0)
    return float(np.mean([np.abs(label_matrix(p).mean(axis=0) - overall) for p in parts]))


def test_stratified_split_on_real_file(real):
    train, val, test = stratified_split(real, val_size=0.15, test_size=0.15, seed=0)
    ids = [set(p["ID"]) for p in (train, val, test)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert ids[0] | ids[1] | ids[2] == set(real["ID"])
    for part, share in ((train, 0.7), (val, 0.15), (test, 0.15)):
        assert abs(len(part) - share * len(real)) < 0.01 * len(real)
        assert part["ID"].is_monotonic_increasing  # input order kept (the file is in ID order)
    y = label_matrix(real)
    gap = prevalence_gap((train, val, test), y)
    for seed in range(5):
        r_train, rest = train_test_split(real, test_size=0.3, random_state=seed)
        r_val, r_test = train_test_split(rest, test_size=0.5, random_state=seed)
        random_gap = prevalence_gap((r_train, r_val, r_test), y)
        assert gap < random_gap, (seed, gap, random_gap)


def test_stratified_split_is_seeded(real):
    a = stratified_split(real, 0.2, 0.1, seed=3)
    b = stratified_split(real, 0.2, 0.1, seed=3)
    c = stratified_split(real, 0.2, 0.1, seed=4)
    assert all(x["ID"].tolist() == y["ID"].tolist() for x, y in zip(a, b))
    assert a[1]["ID"].tolist() != c[1]["ID"].tolist()


def test_stratified_split_without_test_part(real):
    train, val, test = stratified_split(real, val_size=0.2, seed=1)
    assert len(test) == 0 and list(test.columns) == COLUMNS
    assert len(train) + len(val) == len(real)


def test_stratified_split_rejects_bad_sizes(real):
    with pytest.raises(SplitError, match="sum below 1"):
        stratified_split(real, val_size=0.6, test_size=0.5)


# ---------------------------------------------------------------- OIA-ODIR test sets


def small_annotations(first_id: int) -> pd.DataFrame:
    rows = []
    for i in range(first_id, first_id + 3):
        rows.append([i, 50, "Male", f"{i}_left.jpg", f"{i}_right.jpg", "normal fundus", "normal fundus",
                     1, 0, 0, 0, 0, 0, 0, 0])
    return pd.DataFrame(rows, columns=COLUMNS)


def test_load_test_sets_finds_present_sets(tmp_path):
    assert load_test_sets(tmp_path) == {}
    (_, off_rel, _), (_, on_rel, _) = OIA.test_sets
    off = tmp_path / off_rel
    off.parent.mkdir(parents=True)
    small_annotations(937).to_excel(off, index=False)
    on = tmp_path / on_rel.replace(" ", "_")  # some mirrors use underscores
    on.parent.mkdir(parents=True)
    small_annotations(2174).to_excel(on, index=False)  # IDs that are special in the training set
    sets = load_test_sets(tmp_path)
    assert sorted(sets) == ["off_site_test", "on_site_test"]
    assert sets["off_site_test"]["ID"].tolist() == [937, 938, 939]
    assert sets["on_site_test"]["ID"].tolist() == [2174, 2175, 2176]  # test sets are never filtered


# ---------------------------------------------------------------- split files


def test_save_and_load_split(tmp_path):
    path = save_split(tmp_path / "splits" / "split.json", np.array([3, 1]), [2], test_ids=[7, 8])
    assert load_split(path) == {"train": [3, 1], "val": [2], "test": [7, 8]}
    assert json.loads(path.read_text())["val"] == [2]
    assert [p.name for p in path.parent.iterdir()] == ["split.json"]
    assert load_split(save_split(tmp_path / "two.json", [1], [2])) == {"train": [1], "val": [2]}


def test_split_errors(tmp_path):
    with pytest.raises(SplitError, match="patient ID 2 is in both 'train' and 'val'"):
        save_split(tmp_path / "s.json", [1, 2], [2])
    with pytest.raises(SplitError, match="not found"):
        load_split(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SplitError, match="not a readable JSON"):
        load_split(bad)
    bad.write_text(json.dumps({"train": [1], "val": ["x"]}))
    with pytest.raises(SplitError, match="'val' must be a list of integer"):
        load_split(bad)
    bad.write_text(json.dumps({"train": [1]}))
    with pytest.raises(SplitError, match="keys train, val"):
        load_split(bad)
