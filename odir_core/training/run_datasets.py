"""The datasets a training run reads, built once from its setup for both trainers."""

from __future__ import annotations

from dataclasses import dataclass

from odir_core.data.dataset import DualEyeDataset


@dataclass
class RunDatasets:
    """``train_plain`` and ``val``: centre-cropped, not augmented (features, evaluation); ``train``: the
    training split as the optimizer sees it (``config.augment``), None when training on cached features."""

    train_plain: DualEyeDataset
    val: DualEyeDataset
    train: DualEyeDataset | None


def run_datasets(setup) -> RunDatasets:
    """The datasets of ``setup`` (an ``odir_core.training.run.RunSetup``)."""
    config = setup.config
    common = dict(image_size=config.image_size, crop_size=config.crop_size, normalize=config.normalize,
                  seed=config.seed)
    train_plain = DualEyeDataset(setup.data_dir, setup.train_df, augment="none", train=False, **common)
    val = DualEyeDataset(setup.data_dir, setup.val_df, augment="none", train=False, **common)
    train = None
    if not config.uses_feature_cache:
        train = DualEyeDataset(setup.data_dir, setup.train_df, augment=config.augment, train=True, **common)
    return RunDatasets(train_plain, val, train)
