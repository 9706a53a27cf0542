"""WeightedBCEWithLogits against torch.nn.BCEWithLogitsLoss; pos_weight_from_labels.

Runs on whichever Keras backend is active (torch by default; also passes with
KERAS_BACKEND=jax); the reference is always torch itself.
"""

import numpy as np
import pandas as pd
import pytest
import torch

from keras_odir.losses import WeightedBCEWithLogits
from odir_core.labels import LABELS
from odir_core.training.class_weights import pos_weight_from_labels
from reference_data import ANNOTATIONS, require

import keras  # noqa: E402  (after keras_odir, which picks the default backend)
from keras import ops  # noqa: E402



def torch_bce(logits, targets, pos_weight=None):
    pw = None if pos_weight is None else torch.tensor(pos_weight, dtype=torch.float64)
    loss = torch.nn.BCEWithLogitsLoss(pos_weight=pw)
    return float(loss(torch.tensor(logits, dtype=torch.float64), torch.tensor(targets, dtype=torch.float64)))


def ours(logits, targets, pos_weight=None, sample_weight=None):
    loss = WeightedBCEWithLogits(pos_weight=pos_weight)
    return float(ops.convert_to_numpy(loss(targets, logits, sample_weight=sample_weight)))


def random_batch(seed, n=6, scale=3.0):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(n, 8)) * scale).astype(np.float32)
    targets = (rng.random((n, 8)) < 0.3).astype(np.float32)
    return logits, targets


PW = np.array([2.07, 2.10, 15.3, 15.5, 20.3, 33.0, 19.1, 2.57], np.float32)


@pytest.mark.parametrize("pos_weight", [None, PW], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_torch(pos_weight, seed):
    logits, targets = random_batch(seed)
    assert ours(logits, targets, pos_weight) == pytest.approx(
        torch_bce(logits, targets, pos_weight), rel=1e-6, abs=1e-7
    )


@pytest.mark.parametrize("pos_weight", [None, PW], ids=["unweighted", "weighted"])
def test_extreme_logits_are_finite_and_match_torch(pos_weight):
    logits = np.array([[100.0, -100.0, 100.0, -100.0, 0.0, 50.0, -50.0, 88.0]] * 2, np.float32)
    targets = np.array([[1, 0, 0, 1, 1, 0, 1, 0], [0, 1, 1, 0, 0, 1, 0, 1]], np.float32)
    value = ours(logits, targets, pos_weight)
    assert np.isfinite(value)
    assert value == pytest.approx(torch_bce(logits, targets, pos_weight), rel=1e-6)


def test_hand_computed_value():
    """Logits 0 and ln 3 (sigmoid 1/2, 3/4), targets 1 and 0, pos_weight 2 and 5:
    elements 2*ln2 and -ln(1/4) = ln4; mean = (2 ln2 + 2 ln2) / 2 = 2 ln 2."""
    logits = np.array([[0.0, np.log(3.0)]], np.float32)
    targets = np.array([[1.0, 0.0]], np.float32)
    assert ours(logits, targets, [2.0, 5.0]) == pytest.approx(2 * np.log(2.0), rel=1e-6)
    assert ours(logits, targets) == pytest.approx((np.log(2.0) + np.log(4.0)) / 2, rel=1e-6)


def test_mean_over_batch_and_labels_and_sample_weight():
    logits, targets = random_batch(5, n=4)
    per_element = torch.nn.BCEWithLogitsLoss(reduction="none")(
        torch.tensor(logits, dtype=torch.float64), torch.tensor(targets, dtype=torch.float64)
    ).numpy()
    sw = np.array([1.0, 0.0, 2.0, 0.5], np.float32)
    expected = (per_element.mean(axis=1) * sw).sum() / 4  # Keras: weighted sum / batch size
    assert ours(logits, targets, sample_weight=sw) == pytest.approx(expected, rel=1e-6)


def test_serializes_with_pos_weight():
    loss = WeightedBCEWithLogits(pos_weight=PW)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, WeightedBCEWithLogits)
    np.testing.assert_allclose(restored.pos_weight, PW, rtol=1e-7)
    logits, targets = random_batch(3)
    assert ours(logits, targets, restored.pos_weight) == pytest.approx(ours(logits, targets, PW))


def test_saved_in_keras_file(tmp_path):
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(8)(inputs))
    model.compile(optimizer="sgd", loss=WeightedBCEWithLogits(pos_weight=PW))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.loss, WeightedBCEWithLogits)
    np.testing.assert_allclose(loaded.loss.pos_weight, PW, rtol=1e-7)


def test_rejects_bad_pos_weight():
    with pytest.raises(ValueError, match="finite and >= 0"):
        WeightedBCEWithLogits(pos_weight=[1.0, -2.0])
    with pytest.raises(ValueError, match="finite and >= 0"):
        WeightedBCEWithLogits(pos_weight=[1.0, np.inf])


def test_pos_weight_by_hand():
    y = np.array([[1, 0, 1], [0, 0, 1], [0, 1, 1], [1, 0, 0]])
    np.testing.assert_allclose(pos_weight_from_labels(y), [1.0, 3.0, 1 / 3], rtol=1e-7)


def test_pos_weight_missing_positive_names_the_label():
    y = np.zeros((4, 8), int)
    y[:, :5] = 1
    with pytest.raises(ValueError, match="label\\(s\\) H, M, O have no positive"):
        pos_weight_from_labels(y)


@pytest.mark.parametrize(
    "y,match",
    [(np.array([0, 1, 1]), "shape"), (np.zeros((0, 8)), "shape"), (np.array([[0, 2]]), "0 or 1")],
)
def test_pos_weight_bad_input(y, match):
    with pytest.raises(ValueError, match=match):
        pos_weight_from_labels(y)


def test_pos_weight_on_the_odir_annotations():
    """Published positive counts in the 3500 annotations: N 1140, D 1128, G 215, C 212,
    A 164, H 103, M 174, O 979."""
    y = pd.read_excel(require(ANNOTATIONS))[list(LABELS)].to_numpy()
    counts = np.array([1140, 1128, 215, 212, 164, 103, 174, 979], np.float64)
    np.testing.assert_allclose(pos_weight_from_labels(y), (3500 - counts) / counts, rtol=1e-6)
