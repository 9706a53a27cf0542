"""Grad-CAM: the stage explained at each input size, and an overlay that keeps the fundus visible."""

import cv2
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from keras_odir.inference import KerasPredictor
from keras_odir.model import build_dual_model
from keras_odir.weights import torch_to_keras_state
from odir_core.evaluation import plots
from odir_core.evaluation.inference import choose_gradcam_stage
from odir_core.model.model_spec import HEADS
from reference_data import REAL_SAMPLES, needs
from torch_odir.inference import TorchPredictor
from torch_odir.model import DualNet

# torchvision's ResNet50 halves the side (rounding up) in conv1, the max-pool and each of layer2-4
EXPECTED = {
    32: ([("layer1", 8), ("layer2", 4), ("layer3", 2), ("layer4", 1)], "layer1"),
    64: ([("layer1", 16), ("layer2", 8), ("layer3", 4), ("layer4", 2)], "layer2"),
    224: ([("layer1", 56), ("layer2", 28), ("layer3", 14), ("layer4", 7)], "layer4"),
}


@pytest.fixture(scope="module")
def predictors():
    torch.manual_seed(0)
    return TorchPredictor(DualNet("resnet50", "v0"), torch.device("cpu")), KerasPredictor(build_dual_model("resnet50", "v0"))


@pytest.mark.parametrize("size", sorted(EXPECTED))
def test_stage_chosen_for_the_input_size(predictors, size):
    stages, chosen = EXPECTED[size]
    expected = [(name, (side, side)) for name, side in stages]
    for predictor in predictors:
        found = predictor.gradcam_stages((size, size))
        assert found == expected
        side = dict(stages)[chosen]
        assert choose_gradcam_stage(found) == (chosen, (side, side))


def test_choice_falls_back_to_the_largest_map():
    assert choose_gradcam_stage([("a", (4, 4)), ("b", (2, 2)), ("c", (1, 1))]) == ("a", (4, 4))
    assert choose_gradcam_stage([("a", (14, 14)), ("b", (7, 6)), ("c", (3, 3))]) == ("a", (14, 14))


def test_gradcam_at_an_earlier_stage_matches_torch_in_keras(predictors):
    torch_side, keras_side = predictors
    torch_to_keras_state(keras_side.model, torch_side.model.state_dict())
    rng = np.random.default_rng(0)
    left, right = (rng.normal(size=(1, 64, 64, 3)).astype(np.float32) for _ in range(2))
    expected = np.stack(torch_side.gradcam(left, right, 3))
    maps = np.stack(keras_side.gradcam(left, right, 3))
    assert maps.shape == (2, 8, 8)  # layer2 at 64 px
    np.testing.assert_allclose(maps, expected, atol=1e-3)


@pytest.mark.parametrize("head", [name for name, spec in HEADS.items() if spec.uses_maps])
def test_gradcam_through_a_head_on_feature_maps_matches_torch_in_keras(head):
    torch.manual_seed(1)
    torch_side = TorchPredictor(DualNet("resnet18", head), torch.device("cpu"))
    keras_side = KerasPredictor(torch_to_keras_state(build_dual_model("resnet18", head), torch_side.model.state_dict()))
    rng = np.random.default_rng(1)
    left, right = (rng.normal(size=(1, 64, 64, 3)).astype(np.float32) for _ in range(2))
    for stage, side in (("layer4", 2), (None, 8)):  # the map the head takes, and the one chosen at 64 px (layer2)
        expected = np.stack(torch_side.gradcam(left, right, 2, stage))
        maps = np.stack(keras_side.gradcam(left, right, 2, stage))
        assert maps.shape == (2, side, side) and np.isfinite(maps).all()
        np.testing.assert_allclose(maps, expected, atol=1e-3)


def _photo(size=256):
    img = cv2.cvtColor(cv2.imread(str(PHOTO)), cv2.COLOR_BGR2RGB)
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


def _blob():
    yy, xx = np.mgrid[:8, :8]
    return np.exp(-((xx - 5.0) ** 2 + (yy - 3.0) ** 2) / 4.0)


PHOTO = REAL_SAMPLES / "1539_left.png"


@needs(PHOTO)
def test_overlay_keeps_the_fundus_visible():
    photo, heat = _photo(), _blob()
    shown = plots.overlay_heatmap(photo, heat)
    gray = [cv2.cvtColor(a, cv2.COLOR_RGB2GRAY).astype(float).ravel() for a in (shown, photo)]
    assert np.corrcoef(*gray)[0, 1] > 0.9
    up = np.clip(cv2.resize(heat.astype(np.float32), (256, 256), interpolation=cv2.INTER_LINEAR), 0, 1)
    cold = up < 0.02  # where the model did not look, the photograph is left as it is
    assert cold.mean() > 0.3
    assert np.abs(shown[cold].astype(int) - photo[cold].astype(int)).max() <= 4
    # each pixel: the colour bar's colour of its heat h at opacity 0.6 h over the photograph
    colour = 255 * plt.get_cmap(plots.GRADCAM_CMAP)(up)[..., :3]
    expected = (1 - 0.6 * up[..., None]) * photo + 0.6 * up[..., None] * colour
    assert np.abs(shown - expected).max() <= 1.0


@needs(PHOTO)
def test_prediction_figure_has_a_colour_bar_only_with_gradcam():
    photo = _photo(128)
    with_cam = plots.prediction_figure(photo, photo, np.full(8, 0.3), heatmaps=(_blob(), _blob()),
                                       gradcam_label="D, layer2 map 8x8")
    without = plots.prediction_figure(photo, photo, np.full(8, 0.3))
    try:
        bars = [ax for ax in with_cam.axes if ax.get_label() == "<colorbar>"]
        assert len(bars) == 1 and "Grad-CAM" in bars[0].get_xlabel()
        assert "layer2 map 8x8" in with_cam.axes[0].get_title()
        assert not [ax for ax in without.axes if ax.get_label() == "<colorbar>"]
    finally:
        plt.close(with_cam)
        plt.close(without)
