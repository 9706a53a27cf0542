"""odir_core.data.sampler: hand-derived sequences on tiny label matrices, and balance on the real annotations."""

import numpy as np
import pandas as pd
import pytest

from odir_core.data.sampler import MultilabelBalancedSampler, SamplerError
from odir_core.labels import LABELS
from reference_data import ANNOTATIONS, require


ONE_HOT_3 = np.eye(3, dtype=int)  # patient i has class i only


def _real_labels() -> np.ndarray:
    require(ANNOTATIONS)
    return pd.read_excel(ANNOTATIONS)[list(LABELS)].to_numpy()


def test_least_sampled_one_hot_blocks_are_permutations():
    # With one patient per class, counts are equal after every k draws, so each block of k draws
    # must contain every patient exactly once, across epochs too (counts persist).
    for seed in range(5):
        s = MultilabelBalancedSampler(ONE_HOT_3, seed=seed)
        draws = np.concatenate([s.epoch() for _ in range(4)])
        assert len(draws) == 12
        for block in draws.reshape(4, 3):
            assert sorted(block.tolist()) == [0, 1, 2]
        assert s.counts.tolist() == [4, 4, 4]


def test_least_sampled_counts_every_label_of_the_chosen_patient():
    # Patient 0 has classes 0 and 1, patient 1 has class 1 only. Counts (a, b) keep b >= a; class 1
    # can only be chosen while a == b, i.e. until patient 1 is drawn once (then b = a + 1 forever).
    # So patient 1 appears at most once, and before it only patient 0 is drawn.
    labels = np.array([[1, 1], [0, 1]])
    seen_once = 0
    for seed in range(40):
        s = MultilabelBalancedSampler(labels, indices=[0, 1] * 10, seed=seed)
        draws = s.epoch().tolist()
        assert draws.count(1) <= 1
        seen_once += draws.count(1)
        assert s.counts.tolist() == [20 - draws.count(1), 20]
    # P(patient 1 in the first 20 draws) = 1 - (3/4)**20 ~ 0.997 (tie 1/2 x member 1/2 per draw)
    assert seen_once >= 36


def test_least_sampled_counts_persist_across_epochs():
    # Classes 0 (patients 0, 2) and 1 (patient 1); 3 draws per epoch. With persisting counts every
    # aligned pair of draws holds patient 1 exactly once, including the pair spanning the epochs.
    labels = np.array([[1, 0], [0, 1], [1, 0]])
    for seed in range(5):
        s = MultilabelBalancedSampler(labels, seed=seed)
        draws = np.concatenate([s.epoch(), s.epoch()])
        assert [pair.tolist().count(1) for pair in draws.reshape(3, 2)] == [1, 1, 1]


def test_cycle_visits_classes_in_turn_across_epochs_and_skips_empty_classes():
    labels = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])  # class 1 has no patient
    s = MultilabelBalancedSampler(labels, class_choice="cycle", seed=3)
    assert s.empty_classes.tolist() == [1]
    assert s.epoch().tolist() == [0, 1, 2]
    s2 = MultilabelBalancedSampler(labels, indices=[0, 1], class_choice="cycle", seed=3)
    assert s2.empty_classes.tolist() == [1, 3]
    assert [s2.epoch().tolist() for _ in range(3)] == [[0, 1], [0, 1], [0, 1]]
    s3 = MultilabelBalancedSampler(ONE_HOT_3, indices=[0, 1, 2, 0], class_choice="cycle")
    assert s3.epoch().tolist() + s3.epoch().tolist() == [0, 1, 2, 0, 1, 2, 0, 1]


def test_random_choice_is_uniform_over_classes():
    # one patient per class but class 0 has 50 patients: uniform class choice still gives ~1/3 each
    labels = np.zeros((52, 3), dtype=int)
    labels[:50, 0] = 1
    labels[50, 1] = labels[51, 2] = 1
    s = MultilabelBalancedSampler(labels, class_choice="random", seed=0)
    draws = np.concatenate([s.epoch() for _ in range(60)])  # 3120 draws
    shares = np.array([(draws < 50).mean(), (draws == 50).mean(), (draws == 51).mean()])
    assert np.all(np.abs(shares - 1 / 3) < 0.03), shares  # > 3.5 standard deviations
    assert len(np.unique(draws[draws < 50])) == 50  # the patient within a class is random too


@pytest.mark.parametrize("class_choice", ["least_sampled", "random", "cycle"])
def test_draws_come_from_indices_and_empty_classes_are_never_chosen(class_choice):
    rng = np.random.default_rng(1)
    labels = (rng.random((40, 8)) < 0.3).astype(int)
    labels[:, 6] = 0
    labels[:, 6][[3, 5]] = 1  # class 6 only outside the indices below
    labels[labels.sum(axis=1) == 0, 0] = 1
    indices = np.array([i for i in range(40) if i not in (3, 5)][:30])
    s = MultilabelBalancedSampler(labels, indices=indices, class_choice=class_choice, seed=2)
    assert s.empty_classes.tolist() == [6]
    draws = np.concatenate([s.epoch() for _ in range(3)])
    assert len(draws) == 90 and set(draws.tolist()) <= set(indices.tolist())
    np.testing.assert_array_equal(s.counts, labels[draws].sum(axis=0))
    assert s.counts[6] == 0


@pytest.mark.parametrize("class_choice", ["least_sampled", "random", "cycle"])
def test_same_seed_same_sequence(class_choice):
    rng = np.random.default_rng(5)
    labels = (rng.random((200, 8)) < 0.25).astype(int)
    a = MultilabelBalancedSampler(labels, class_choice=class_choice, seed=7)
    b = MultilabelBalancedSampler(labels, class_choice=class_choice, seed=7)
    c = MultilabelBalancedSampler(labels, class_choice=class_choice, seed=8)
    first = [list(a), list(a)]
    assert first == [list(b), list(b)]
    assert first != [list(c), list(c)]
    assert all(isinstance(i, int) for i in first[0]) and len(first[0]) == len(a) == 200


def test_state_dict_resumes_the_sequence():
    rng = np.random.default_rng(6)
    labels = (rng.random((100, 8)) < 0.3).astype(int)
    a = MultilabelBalancedSampler(labels, seed=1)
    a.epoch()
    state = a.state_dict()
    expected = [a.epoch().tolist(), a.epoch().tolist()]
    b = MultilabelBalancedSampler(labels, seed=99)
    b.load_state_dict(state)
    assert [b.epoch().tolist(), b.epoch().tolist()] == expected


def test_real_annotations_least_sampled_rises_far_above_shuffling():
    labels = _real_labels()
    epochs = 10
    sampler = MultilabelBalancedSampler(labels, class_choice="least_sampled", seed=0)
    balanced = np.zeros(8, dtype=np.int64)
    for _ in range(epochs):
        balanced += labels[sampler.epoch()].sum(axis=0)
    rng = np.random.default_rng(0)
    shuffled = sum(labels[rng.permutation(len(labels))].sum(axis=0) for _ in range(epochs))
    # plain shuffling sees each patient once per epoch: min count = 10 x 103 hypertension patients
    assert shuffled.min() == epochs * 103
    # least_sampled keeps all classes level: every class gets at least ~1/8 of 2 draws per patient
    # on average (ODIR patients carry ~1.15 labels); observed about 6000
    assert balanced.min() >= 5 * shuffled.min(), (balanced.tolist(), shuffled.tolist())
    assert balanced.max() - balanced.min() <= 0.01 * balanced.min()
    np.testing.assert_array_equal(balanced, sampler.counts)


def test_torch_dataloader_accepts_it():
    torch = pytest.importorskip("torch")
    labels = np.eye(4, dtype=int).repeat(3, axis=0)
    data = torch.utils.data.TensorDataset(torch.arange(12))
    sampler = MultilabelBalancedSampler(labels, seed=0)
    loader = torch.utils.data.DataLoader(data, batch_size=4, sampler=sampler)
    batches = [b[0].tolist() for b in loader]
    assert len(loader) == 3 and sum(len(b) for b in batches) == 12
    # each block of 4 draws has one patient of each class (rows 3c..3c+2 are class c)
    for block in batches:
        assert sorted(i // 3 for i in block) == [0, 1, 2, 3]


def test_bad_input():
    with pytest.raises(SamplerError, match="class_choice"):
        MultilabelBalancedSampler(ONE_HOT_3, class_choice="balanced")
    with pytest.raises(SamplerError, match="only 0 and 1; row 1 column 2"):
        MultilabelBalancedSampler([[1, 0, 0], [0, 1, 2]])
    with pytest.raises(SamplerError, match="shape"):
        MultilabelBalancedSampler(np.ones(5))
    with pytest.raises(SamplerError, match=r"\[0, 3\)"):
        MultilabelBalancedSampler(ONE_HOT_3, indices=[0, 3])
    with pytest.raises(SamplerError, match="integer"):
        MultilabelBalancedSampler(ONE_HOT_3, indices=[0.5])
    with pytest.raises(SamplerError, match="no class has a positive"):
        MultilabelBalancedSampler(np.zeros((4, 3)))


def test_dataframe_labels_use_label_columns():
    df = pd.DataFrame(np.eye(8, dtype=int)[::-1], columns=list(LABELS)).assign(ID=range(8))
    df = df[["ID", *reversed(LABELS)]]  # columns out of order
    s = MultilabelBalancedSampler(df, class_choice="cycle")
    assert s.epoch().tolist() == [7, 6, 5, 4, 3, 2, 1, 0]  # class N first: the last row has N
