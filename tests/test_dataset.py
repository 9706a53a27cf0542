"""DualEyeDataset and EpochOrder: images, crops, normalisation, determinism, errors."""

import cv2
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

from odir_core.data.annotations import read_annotations
from odir_core.data.dataset import DataError, DualEyeDataset, EpochOrder, batch_slices
from odir_core.data.sampler import MultilabelBalancedSampler
from odir_core.data.synthetic import generate


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = generate(tmp_path_factory.mktemp("syn") / "set", patients=12, size=48, seed=1)
    return root, read_annotations(root / "annotations.xlsx")


def _reference_image(root, name, size):
    img = cv2.cvtColor(cv2.imread(str(root / "images" / name)), cv2.COLOR_BGR2RGB)
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


def test_validation_pair_is_resized_center_cropped_and_imagenet_normalised(prepared):
    root, df = prepared
    ds = DualEyeDataset(root, df, image_size=40, crop_size=32, train=False)
    left, right = ds.pair(3)
    assert left.shape == right.shape == (32, 32, 3) and left.dtype == np.float32
    for got, name in ((left, df["Left-Fundus"][3]), (right, df["Right-Fundus"][3])):
        img = torch.from_numpy(_reference_image(root, name, 40)).permute(2, 0, 1).float() / 255
        want = TF.normalize(TF.center_crop(img, [32, 32]), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        np.testing.assert_allclose(got, want.permute(1, 2, 0).numpy(), atol=1e-5)


def test_without_normalisation_values_are_unit_scaled(prepared):
    root, df = prepared
    left, _ = DualEyeDataset(root, df, image_size=48, normalize=False, train=False).pair(0)
    np.testing.assert_allclose(left, _reference_image(root, df["Left-Fundus"][0], 48) / 255.0, atol=1e-6)


def test_batch_layout_and_labels(prepared):
    root, df = prepared
    ds = DualEyeDataset(root, df, image_size=32, train=False)
    x, y = ds.batch([5, 0, 2])
    assert set(x) == {"left", "right"} and x["left"].shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(y, df.loc[[5, 0, 2], list("NDGCAHMO")].to_numpy(np.float32))


def test_augmentation_is_a_function_of_seed_epoch_and_position(prepared):
    root, df = prepared
    a = DualEyeDataset(root, df, image_size=40, crop_size=32, augment="dual", seed=7, cache=False)
    b = DualEyeDataset(root, df, image_size=40, crop_size=32, augment="dual", seed=7)
    for epoch, position in ((0, 0), (3, 5)):
        for x, y in zip(a.pair(4, epoch, position), b.pair(4, epoch, position)):
            np.testing.assert_array_equal(x, y)
    draws = {a.pair(4, e, 0)[0].tobytes() for e in range(4)}
    assert len(draws) > 1  # epochs draw differently
    assert a.pair(4, 0, 0)[0].shape == (32, 32, 3)


def test_independent_mode_keeps_size_and_center_crops(prepared):
    root, df = prepared
    ds = DualEyeDataset(root, df, image_size=40, crop_size=32, augment="independent", seed=1)
    left, right = ds.pair(1, 2, 3)
    assert left.shape == right.shape == (32, 32, 3)


def test_missing_image_names_patient_and_file(prepared, tmp_path):
    root, df = prepared
    bad = df.copy()
    bad.loc[2, "Right-Fundus"] = "nowhere.jpg"
    with pytest.raises(DataError, match=rf"patient {df['ID'][2]}: nowhere.jpg"):
        DualEyeDataset(root, bad, image_size=32)


def test_corrupt_image_names_patient_and_file(prepared, tmp_path):
    root, df = prepared
    images = tmp_path / "images"
    images.mkdir()
    for name in list(df["Left-Fundus"]) + list(df["Right-Fundus"]):
        (images / name).write_bytes((root / "images" / name).read_bytes())
    (images / df["Left-Fundus"][1]).write_bytes(b"not an image")
    ds = DualEyeDataset(tmp_path, df, image_size=32)
    ds.pair(0)
    with pytest.raises(DataError, match=rf"patient {df['ID'][1]}: .*{df['Left-Fundus'][1]}"):
        ds.pair(1)


def test_shuffled_order_is_a_seeded_permutation():
    a, b = EpochOrder(10, seed=3), EpochOrder(10, seed=3)
    assert sorted(a(0)) == list(range(10))
    np.testing.assert_array_equal(a(2), b(2))
    assert not np.array_equal(a(0), a(1))
    np.testing.assert_array_equal(EpochOrder(5, shuffle=False)(4), np.arange(5))


def test_balanced_order_carries_counts_over_epochs_and_replays():
    labels = np.random.default_rng(0).integers(0, 2, (30, 8))
    sampler = MultilabelBalancedSampler(labels, seed=5)
    expected = [np.array(list(sampler)) for _ in range(4)]
    order = EpochOrder(30, seed=5, labels=labels)
    for epoch in (0, 1, 2, 3):
        np.testing.assert_array_equal(order(epoch), expected[epoch])
    fresh = EpochOrder(30, seed=5, labels=labels)
    np.testing.assert_array_equal(fresh(3), expected[3])  # resume at epoch 3
    np.testing.assert_array_equal(fresh(1), expected[1])  # an earlier epoch replays


def test_batch_slices_keep_the_last_partial_batch():
    parts = batch_slices(np.arange(10), 4)
    assert [len(p) for p in parts] == [4, 4, 2]
