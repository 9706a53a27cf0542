"""The training losses: WeightedBCEWithLogits against torch.nn.BCEWithLogitsLoss; the focal loss (keras_odir,
torch_odir, numpy) against torchvision.ops.sigmoid_focal_loss and the asymmetric loss against the paper's formula
computed by hand; finite gradients at saturated logits; the loss each config picks; pos_weight_from_labels.

Runs on whichever Keras backend is active (torch by default; also passes with
KERAS_BACKEND=jax); the references are torch, torchvision and mpmath.
"""

import mpmath
import numpy as np
import pandas as pd
import pytest
import torch
import torchvision

from keras_odir.losses import KERAS_LOSSES, AsymmetricLossWithLogits, FocalLossWithLogits, WeightedBCEWithLogits
from keras_odir.losses import training_loss as keras_training_loss
from odir_core.labels import LABELS
from odir_core.training.class_weights import pos_weight_from_labels
from odir_core.training.config import TrainConfig
from odir_core.training.losses import asymmetric_loss_with_logits, bce_with_logits, focal_loss_with_logits, numpy_loss
from reference_data import ANNOTATIONS, require
from torch_odir.losses import AsymmetricLossWithLogits as TorchASL
from torch_odir.losses import FocalLossWithLogits as TorchFocal
from torch_odir.losses import training_loss as torch_training_loss

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


# ---- focal and asymmetric losses -------------------------------------------------------------------------------

FOCAL_SETTINGS = [(2.0, 0.25), (0.0, 0.25), (0.5, -1.0), (1.0, 0.9), (5.0, 0.0)]  # (gamma, alpha)
ASL_SETTINGS = [(4.0, 0.0, 0.05), (4.0, 1.0, 0.05), (0.0, 0.0, 0.0), (2.0, 1.0, 0.0), (0.5, 0.5, 0.2), (1.0, 3.0, 0.5)]
EXTREMES = [30.0, -30.0, 80.0, -80.0, 17.0, -17.0, 1e-3, 0.0]


def loss_batch(seed, n=6):
    """Random logits (scale 4) with a row of saturated ones, targets with both classes in every column."""
    logits, targets = random_batch(seed, n=n, scale=4.0)
    logits[0], logits[1] = EXTREMES, EXTREMES[::-1]
    targets[0], targets[1] = 1.0, 0.0
    return logits, targets


def positive_weighted(elementwise, targets, pos_weight):
    """The mean of per-element losses with the positive elements' loss times the label's weight."""
    w = 1.0 if pos_weight is None else np.where(targets == 1, np.asarray(pos_weight, np.float64), 1.0)
    return float(np.mean(w * elementwise))


def torchvision_focal(logits, targets, gamma, alpha, pos_weight=None):
    """torchvision's sigmoid_focal_loss in float64 (per element, then the positive term weighted)."""
    x, y = (torch.tensor(a, dtype=torch.float64) for a in (logits, targets))
    per_element = torchvision.ops.sigmoid_focal_loss(x, y, alpha=alpha, gamma=gamma, reduction="none").numpy()
    if pos_weight is None:  # the reduction torchvision itself offers
        mean = torchvision.ops.sigmoid_focal_loss(x, y, alpha=alpha, gamma=gamma, reduction="mean").item()
        assert mean == pytest.approx(per_element.mean(), rel=1e-12)
    return positive_weighted(per_element, targets, pos_weight)


def asl_by_hand(logits, targets, gamma_neg, gamma_pos, clip, pos_weight=None):
    """The paper's formula term by term: p = sigmoid(x), pm = max(p - m, 0), L+ = (1 - p)^gp log p,
    L- = pm^gn log(1 - pm), loss = -y L+ - (1 - y) L-; at 50 digits (float64 cannot hold 1 - sigmoid(x) past
    x = 37), then rounded to float64."""
    per_element = np.zeros(np.shape(logits))
    with mpmath.workdps(50):
        for index, x in np.ndenumerate(np.asarray(logits, np.float64)):
            p = 1 / (1 + mpmath.exp(-mpmath.mpf(float(x))))
            pm = max(p - mpmath.mpf(clip), mpmath.mpf(0))
            l_pos = (1 - p) ** gamma_pos * mpmath.log(p)
            l_neg = pm ** gamma_neg * mpmath.log(1 - pm)
            y = float(targets[index])
            per_element[index] = float(-y * l_pos - (1 - y) * l_neg)
    return positive_weighted(per_element, targets, pos_weight)


def keras_value(loss, logits, targets):
    return float(ops.convert_to_numpy(loss(targets, logits)))


def keras_gradient(loss, logits, targets) -> np.ndarray:
    """d loss / d logits on the active Keras backend."""
    backend = keras.backend.backend()
    if backend == "torch":
        x = torch.tensor(logits, requires_grad=True)
        loss(torch.tensor(targets), x).backward()
        return x.grad.numpy()
    if backend == "jax":
        import jax

        return np.asarray(jax.grad(lambda x: loss(targets, x))(logits))
    import tensorflow as tf

    x = tf.Variable(logits)
    with tf.GradientTape() as tape:
        value = loss(targets, x)
    return tape.gradient(value, x).numpy()


@pytest.mark.parametrize("pos_weight", [None, PW], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("gamma, alpha", FOCAL_SETTINGS)
def test_focal_matches_torchvision(gamma, alpha, pos_weight):
    """Keras (float32) and numpy against torchvision's sigmoid_focal_loss in float64, saturated logits included."""
    for seed in (0, 1):
        logits, targets = loss_batch(seed)
        want = torchvision_focal(logits, targets, gamma, alpha, pos_weight)
        got = keras_value(FocalLossWithLogits(gamma, alpha, pos_weight=pos_weight), logits, targets)
        assert got == pytest.approx(want, rel=1e-6, abs=1e-7)
        assert focal_loss_with_logits(logits, targets, gamma, alpha, pos_weight) == pytest.approx(want, rel=1e-12)
        module = TorchFocal(gamma, alpha, None if pos_weight is None else torch.tensor(pos_weight))
        assert module(torch.tensor(logits), torch.tensor(targets)).item() == pytest.approx(want, rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("pos_weight", [None, PW], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("gamma_neg, gamma_pos, clip", ASL_SETTINGS)
def test_asymmetric_loss_matches_the_paper_by_hand(gamma_neg, gamma_pos, clip, pos_weight):
    for seed in (0, 1):
        logits, targets = loss_batch(seed)
        want = asl_by_hand(logits, targets, gamma_neg, gamma_pos, clip, pos_weight)
        got = keras_value(AsymmetricLossWithLogits(gamma_neg, gamma_pos, clip, pos_weight=pos_weight), logits, targets)
        assert got == pytest.approx(want, rel=1e-6, abs=1e-7)
        numpy_value = asymmetric_loss_with_logits(logits, targets, gamma_neg, gamma_pos, clip, pos_weight)
        assert numpy_value == pytest.approx(want, rel=1e-12)
        module = TorchASL(gamma_neg, gamma_pos, clip, None if pos_weight is None else torch.tensor(pos_weight))
        assert module(torch.tensor(logits), torch.tensor(targets)).item() == pytest.approx(want, rel=1e-6, abs=1e-7)


def test_without_focusing_both_are_bce():
    logits, targets = loss_batch(3)
    bce = torch_bce(logits, targets, PW)
    assert keras_value(FocalLossWithLogits(0.0, -1.0, pos_weight=PW), logits, targets) == pytest.approx(bce, rel=1e-6)
    assert keras_value(AsymmetricLossWithLogits(0.0, 0.0, 0.0, pos_weight=PW), logits, targets) == pytest.approx(
        bce, rel=1e-6)
    assert focal_loss_with_logits(logits, targets, 0.0, -1.0, PW) == pytest.approx(bce_with_logits(logits, targets, PW),
                                                                                  rel=1e-12)


@pytest.mark.parametrize("make", [
    lambda w: FocalLossWithLogits(2.0, 0.25, pos_weight=w), lambda w: FocalLossWithLogits(0.5, -1.0, pos_weight=w),
    lambda w: AsymmetricLossWithLogits(4.0, 0.0, 0.05, pos_weight=w),
    lambda w: AsymmetricLossWithLogits(0.5, 0.5, 0.2, pos_weight=w),
    lambda w: AsymmetricLossWithLogits(0.5, 1.0, 0.0, pos_weight=w),
], ids=["focal", "focal-gamma0.5", "asl", "asl-gamma0.5", "asl-no-clip"])
def test_gradients_are_finite_at_extreme_logits(make):
    """Saturated logits (where torchvision's (1 - p_t) ** gamma has a NaN gradient for gamma < 1) and logits at
    the margin's edge give finite gradients, in Keras and in torch_odir."""
    logits = np.array([[30, -30, 80, -80, 100, -100, 88, -88], [1e-3, -1e-3, 0, 0, 2.944439, -2.944439, 40, -40]],
                      np.float32)  # sigmoid(2.944439) = 0.95: pm = 0 with clip 0.05
    targets = np.array([[1, 1, 1, 1, 0, 0, 0, 0], [0, 1, 0, 1, 0, 0, 1, 0]], np.float32)
    for pos_weight in (None, PW):
        grad = keras_gradient(make(pos_weight), logits, targets)
        assert np.isfinite(grad).all(), grad
        keras_loss = make(pos_weight)
        module = (TorchFocal if isinstance(keras_loss, FocalLossWithLogits) else TorchASL)(
            **{k: v for k, v in keras_loss.get_config().items() if k in ("gamma", "alpha", "gamma_neg", "gamma_pos",
                                                                          "clip")},
            pos_weight=None if pos_weight is None else torch.tensor(pos_weight))
        x = torch.tensor(logits, requires_grad=True)
        module(x, torch.tensor(targets)).backward()
        assert torch.isfinite(x.grad).all(), x.grad


@pytest.mark.parametrize("loss", [FocalLossWithLogits(1.5, -1.0, pos_weight=PW),
                                  AsymmetricLossWithLogits(3.0, 1.0, 0.1, pos_weight=PW)], ids=["focal", "asl"])
def test_focused_losses_serialize_and_save(loss, tmp_path):
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is type(loss) and restored.get_config() == loss.get_config()
    logits, targets = loss_batch(4)
    assert keras_value(restored, logits, targets) == keras_value(loss, logits, targets)
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(8)(inputs))
    model.compile(optimizer="sgd", loss=loss)
    model.save(tmp_path / "m.keras")
    assert keras.saving.load_model(tmp_path / "m.keras").loss.get_config() == loss.get_config()


@pytest.mark.parametrize("losses, params, match", [
    ((FocalLossWithLogits, TorchFocal), {"gamma": -1.0},
     r"FocalLossWithLogits: gamma must be a number in \[0, 100\], got -1.0"),
    ((FocalLossWithLogits, TorchFocal), {"alpha": 1.5}, r"alpha must be a number in \[0, 1\] or -1"),
    ((AsymmetricLossWithLogits, TorchASL), {"clip": 1.0},
     r"AsymmetricLossWithLogits: clip must be a number in \[0, 1\), got 1.0"),
    ((AsymmetricLossWithLogits, TorchASL), {"gamma_neg": np.nan}, "gamma_neg must be a number in"),
    ((AsymmetricLossWithLogits, FocalLossWithLogits), {"pos_weight": [1.0, -1.0]}, "finite and >= 0"),
])
def test_focused_losses_refuse_bad_parameters(losses, params, match):
    """Both packages' classes refuse what the config refuses (odir_core.training.config.NUMBER_RULES)."""
    for loss in losses:
        with pytest.raises(ValueError, match=match):
            loss(**params)


@pytest.mark.parametrize("name, params", [
    ("bce", {}), ("focal", {"focal_gamma": 1.5, "focal_alpha": -1.0}),
    ("asl", {"asl_gamma_neg": 3.0, "asl_gamma_pos": 1.0, "asl_clip": 0.1}),
])
def test_the_config_picks_the_same_loss_everywhere(name, params):
    """keras_odir's, torch_odir's and the numpy loss of a config agree (weighted: the training loss; unweighted:
    the validation loss)."""
    config = TrainConfig(loss=name, **params)
    logits, targets = loss_batch(5)
    for pos_weight in (None, PW):
        want = numpy_loss(config, pos_weight)(logits, targets)
        assert keras_value(keras_training_loss(config, pos_weight), logits, targets) == pytest.approx(want, rel=1e-6)
        module = torch_training_loss(config, None if pos_weight is None else torch.tensor(pos_weight))
        assert module(torch.tensor(logits), torch.tensor(targets)).item() == pytest.approx(want, rel=1e-6)
    assert isinstance(keras_training_loss(config), KERAS_LOSSES[name])
    assert numpy_loss(config)(logits, targets) == pytest.approx(
        {"bce": bce_with_logits, "focal": focal_loss_with_logits, "asl": asymmetric_loss_with_logits}[name](
            logits, targets, **{k.split("_", 1)[1]: v for k, v in params.items()}), rel=1e-15)
