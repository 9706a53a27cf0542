"""Dual-eye samples from a prepared folder, and the epoch batch order, for both frameworks.

``DualEyeDataset`` turns annotation rows into (left, right, labels): uint8 images from
``images/`` (decoded once and kept in memory when the split is small), resized to
``image_size``, augmented as a pair (training) or centre-cropped (validation), normalised,
float32 NHWC. Every random draw comes from ``(seed, epoch, position in the epoch)``, so an
epoch's batches are the same however the run was interrupted and resumed, and in every
worker process.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from odir_core.data.annotations import image_path, label_matrix
from odir_core.data.augment import augment_pair, center_crop, normalize
from odir_core.data.layouts import PREPARED
from odir_core.data.preprocess import load_image, resize_square
from odir_core.data.sampler import MultilabelBalancedSampler
from odir_core.data.tfds.source import is_tfds_source, open_images
from odir_core.errors import InputError

CACHE_LIMIT_BYTES = 1 << 30  # keep decoded images in memory when they take at most this much


class DataError(InputError):
    """An image that cannot be used; the message names the patient and the file."""


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), *map(int, keys)]))


class DualEyeDataset:
    """Patients of one split of a prepared folder as model inputs.

    ``train=True`` applies ``augment`` (none / dual / independent, crops of ``crop_size``);
    ``train=False`` only centre-crops to ``crop_size``. ``crop_size`` 0 means no crop.
    """

    def __init__(
        self,
        root,
        frame: pd.DataFrame,
        *,
        image_size: int,
        crop_size: int = 0,
        augment: str = "none",
        normalize: bool = True,
        train: bool = True,
        seed: int = 0,
        cache: bool | None = None,
    ):
        self.root = Path(root)
        self.images = self.root / PREPARED.images
        self._tfds = open_images(self.root) if is_tfds_source(self.root) else None  # a built odir5k
        self.frame = frame.reset_index(drop=True)
        self.ids = self.frame["ID"].to_numpy()
        self.labels = label_matrix(self.frame).astype(np.float32)
        self.image_size = int(image_size)
        self.crop_size = int(crop_size) if crop_size and crop_size != image_size else 0
        self.augment = augment if train else "none"
        self.normalize = normalize
        self.train = train
        self.seed = seed
        if cache is None:
            cache = len(self) * 2 * self.image_size**2 * 3 <= CACHE_LIMIT_BYTES
        self._cache: dict[tuple[int, int], np.ndarray] | None = {} if cache else None
        self._check_files()

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def input_size(self) -> int:
        """Side of the arrays returned: the crop size, else the image size."""
        return self.crop_size or self.image_size

    def _path(self, index: int, side: int) -> Path:
        column = ("Left-Fundus", "Right-Fundus")[side]
        where = f"{self.root}: patient {self.ids[index]}, column {column!r}"
        return image_path(self.images, self.frame.iloc[index][column], where)

    def _check_files(self) -> None:
        if self._tfds is not None:  # every record holds both images
            return
        missing = [
            f"patient {self.ids[i]}: {self._path(i, side).name}"
            for i in range(len(self))
            for side in (0, 1)
            if not self._path(i, side).is_file()
        ]
        if missing:
            more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
            raise DataError(
                f"{self.images}: {len(missing)} image(s) missing: {'; '.join(missing[:5])}{more}. "
                "Prepare the folder again (python -m odir_core.prepare) or remove those patients from the annotations."
            )

    def image(self, index: int, side: int) -> np.ndarray:
        """uint8 (image_size, image_size, 3) of one eye (side 0 left, 1 right) of patient row ``index``."""
        key = (index, side)
        if self._cache is not None and key in self._cache:
            return self._cache[key]
        path = self._path(index, side)
        try:
            if self._tfds is not None:
                img = self._tfds.image(self.ids[index], side, self.image_size)
            else:
                img = load_image(path, target_size=self.image_size)
            img = resize_square(img, self.image_size)
        except Exception as exc:  # any decode failure becomes one line naming the patient and file
            raise DataError(f"patient {self.ids[index]}: {path}: cannot be read ({exc})") from None
        if self._cache is not None:
            self._cache[key] = img
        return img

    def pair(self, index: int, epoch: int = 0, position: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """float32 (left, right) HWC of patient row ``index`` as the model sees it in ``epoch``."""
        left, right = self.image(index, 0), self.image(index, 1)
        if self.augment != "none":
            rng = _rng(self.seed, epoch, position, index)
            crop = self.crop_size if self.augment == "dual" else None
            left, right = augment_pair(left, right, rng, mode=self.augment, crop_size=crop)
        if self.crop_size and left.shape[0] != self.crop_size:
            left, right = center_crop(left, self.crop_size), center_crop(right, self.crop_size)
        return self._finish(left), self._finish(right)

    def _finish(self, img: np.ndarray) -> np.ndarray:
        if self.normalize:
            return normalize(img).astype(np.float32, copy=False)
        return img.astype(np.float32) / np.float32(255.0)

    def batch(self, indices, epoch: int = 0, start: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """({"left", "right"}: float32 (b, s, s, 3), labels (b, 8)) for patient rows ``indices``;
        ``start`` is the position of the first one in the epoch's order (keys the random draws)."""
        pairs = [self.pair(int(i), epoch, start + k) for k, i in enumerate(indices)]
        left = np.stack([p[0] for p in pairs])
        right = np.stack([p[1] for p in pairs])
        return {"left": left, "right": right}, self.labels[np.asarray(indices, dtype=np.int64)]


class EpochOrder:
    """Sample order of each epoch, a pure function of (seed, epoch).

    ``labels`` given: the multi-label balanced sampler's draws, whose class counts carry over
    from epoch to epoch as in the study (the sampler is advanced epoch by epoch, and replayed from
    the start when an earlier epoch is asked for, e.g. after a resume). Otherwise a seeded
    permutation per epoch (``shuffle``) or 0..n-1.
    """

    def __init__(self, n: int, seed: int = 0, *, shuffle: bool = True, labels: np.ndarray | None = None):
        self.n = int(n)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.labels = labels
        self._sampler = None
        self._next_epoch = 0
        self._cache: tuple[int, np.ndarray] | None = None

    def __call__(self, epoch: int) -> np.ndarray:
        epoch = int(epoch)
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        if self.labels is not None:
            if self._sampler is None or epoch < self._next_epoch:
                self._sampler = MultilabelBalancedSampler(self.labels, seed=self.seed)
                self._next_epoch = 0
            while True:
                order = np.fromiter(iter(self._sampler), dtype=np.int64, count=len(self._sampler))
                self._next_epoch += 1
                if self._next_epoch > epoch:
                    break
        elif self.shuffle:
            order = _rng(self.seed, epoch).permutation(self.n).astype(np.int64)
        else:
            order = np.arange(self.n, dtype=np.int64)
        self._cache = (epoch, order)
        return order


def batch_slices(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Consecutive batches of ``order`` (the last one may be smaller, as torch's DataLoader)."""
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
