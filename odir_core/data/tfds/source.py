"""A built ``odir5k`` TFDS dataset as training data: annotation rows and eye images.

``--data tfds:odir5k/CONFIG`` (data dir: ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``) or
``--data DATA_DIR/odir5k/CONFIG/VERSION`` names a dataset built by ``python -m odir_core.tfds
build``. Its splits become annotation tables with the columns of ``read_annotations`` (records
in stored order), and its images are read through ``tfds.data_source`` and decoded exactly as
``odir_core.data.imageio.load_image`` decodes the files of a prepared folder, so a prepared folder and
a TFDS build of the same images give the same arrays.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pandas as pd

from odir_core.data.annotations import COLUMNS
from odir_core.data.imageio import decode_image, header_size, is_jpeg, reduction_factor
from odir_core.data.splits import split_frames as by_split_file
from odir_core.errors import InputError
from odir_core.labels import LABELS

PREFIX = "tfds:"
INFO_FILE = "dataset_info.json"
TRAINING_SPLITS = ("train", "validation", "special")  # the splits drawn from the training annotations
SIDES = ("left", "right")
_NEEDED = {"id", "age", "sex", "left", "right", "left_file", "right_file", "left_keywords", "right_keywords",
           "labels"}


class TfdsSourceError(InputError):
    """A ``tfds:`` data source that names no usable built dataset (message says how to build it)."""


def is_tfds_source(data) -> bool:
    """True for ``tfds:NAME/CONFIG`` and for the folder of a built TFDS dataset."""
    text = str(data)
    return text.startswith(PREFIX) or (bool(text) and (Path(text) / INFO_FILE).is_file())


def resolve(data) -> Path:
    """The folder of the built dataset that ``data`` names (``tfds:NAME/CONFIG[:VERSION]`` or the folder)."""
    text = str(data)
    if not text.startswith(PREFIX):
        return Path(text)
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise TfdsSourceError(f"--data {text}: needs tensorflow-datasets; pip install 'keras-odir[tfds]'") from None

    name = text[len(PREFIX):]
    config = name.split("/", 1)[1].split(":")[0] if "/" in name else "CONFIG"
    how = (
        f"build it with `python -m odir_core.tfds build --source PATH --variant {config}` "
        "(and set TFDS_DATA_DIR when you build with --data-dir)"
    )
    try:
        builder = tfds.builder(name, data_dir=os.environ.get("TFDS_DATA_DIR"))  # read now, not at import
    except Exception as exc:  # DatasetNotFoundError and config errors: one line saying what to do
        raise TfdsSourceError(f"--data {text}: no built TFDS dataset {name!r} ({type(exc).__name__}); {how}") from None
    if not builder.is_prepared():
        raise TfdsSourceError(f"--data {text}: {name} is not built in {builder.data_dir}; {how}")
    return Path(builder.data_path)


def decode_eye(data: bytes, target_size: int | None = None) -> np.ndarray:
    """uint8 RGB of stored image bytes, decoded as ``load_image(path, target_size)`` decodes a file."""
    factor = reduction_factor(*header_size(data), target_size) if is_jpeg(data) else 1
    return decode_image(data, factor)


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class TfdsImages:
    """Rows and image bytes of a built odir5k dataset (one folder), read with ``tfds.data_source``."""

    def __init__(self, path):
        self.path = Path(path)
        if not (self.path / INFO_FILE).is_file():
            raise TfdsSourceError(f"{self.path}: no {INFO_FILE}; not a built TFDS dataset")
        self._sources: dict | None = None
        self._index: dict[int, tuple[str, int]] | None = None
        self._frames: dict[str, pd.DataFrame] | None = None
        self._last: tuple | None = None  # ((split, index), record) of the latest record read

    def __getstate__(self):  # data sources are reopened in each worker process
        return {"path": self.path, "_sources": None, "_index": self._index, "_frames": self._frames, "_last": None}

    @property
    def sources(self) -> dict:
        """split name -> ArrayRecordDataSource (images left encoded)."""
        if self._sources is None:
            import tensorflow_datasets as tfds

            builder = tfds.builder_from_directory(self.path)
            missing = _NEEDED - set(builder.info.features.keys())
            if missing:
                raise TfdsSourceError(f"{self.path}: not an odir5k dataset (no feature(s) {sorted(missing)})")
            skip = {side: tfds.decode.SkipDecoding() for side in SIDES}
            self._sources = {name: builder.as_data_source(name, decoders=skip) for name in builder.info.splits}
        return self._sources

    def frames(self) -> dict[str, pd.DataFrame]:
        """split name -> annotation table (``read_annotations`` columns), rows in record order."""
        if self._frames is None:
            self._frames = {name: self._read_frame(source) for name, source in self.sources.items()}
            self._index = {
                int(pid): (name, i)
                for name in TRAINING_SPLITS if name in self._frames
                for i, pid in enumerate(self._frames[name]["ID"])
            }
        return self._frames

    @staticmethod
    def _read_frame(source) -> pd.DataFrame:
        rows = []
        for start in range(0, len(source), 256):
            for r in source.__getitems__(list(range(start, min(start + 256, len(source))))):
                labels = np.asarray(r["labels"])
                age = int(r["age"])
                rows.append([
                    int(r["id"]), age if age >= 0 else np.nan, _text(r["sex"]),
                    _text(r["left_file"]), _text(r["right_file"]),
                    _text(r["left_keywords"]), _text(r["right_keywords"]), *map(int, labels),
                ])
        frame = pd.DataFrame(rows, columns=COLUMNS)
        if frame["Patient Age"].notna().all():
            frame["Patient Age"] = frame["Patient Age"].astype("int64")
        frame[list(LABELS)] = frame[list(LABELS)].astype("int64")
        return frame

    def eye_bytes(self, pid: int, side: int, split: str | None = None) -> bytes:
        """Stored (encoded) image of patient ``pid``'s eye (side 0 left, 1 right); ``split`` is needed
        only for the held-out test splits (training patients are found by ID)."""
        if split is None:
            self.frames()
            try:
                split, i = self._index[int(pid)]
            except KeyError:
                raise TfdsSourceError(f"{self.path}: patient {pid} is in none of {TRAINING_SPLITS}") from None
        else:
            hits = np.flatnonzero(self.frames()[split]["ID"].to_numpy() == int(pid))
            if not len(hits):
                raise TfdsSourceError(f"{self.path}: patient {pid} is not in the {split} split")
            i = int(hits[0])
        last = self._last  # one record holds both eyes: the second eye of a patient is not read again
        if last is None or last[0] != (split, i):
            last = self._last = ((split, i), self.sources[split][i])
        return last[1][SIDES[side]]

    def image(self, pid: int, side: int, target_size: int | None = None) -> np.ndarray:
        """uint8 RGB of one eye, decoded as ``load_image`` decodes a prepared folder's file."""
        return decode_eye(self.eye_bytes(pid, side), target_size)


@functools.lru_cache(maxsize=8)
def open_images(path) -> TfdsImages:
    """The (shared, cached) TfdsImages of a built dataset folder."""
    return TfdsImages(Path(path))


def split_frames(path, split: str = "study") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, val) annotation tables of a built dataset: its ``train`` / ``validation`` splits for
    ``split="study"``, else the IDs of a split file (``odir_core.data.splits.save_split``) taken from
    the training patients (train + validation + special)."""
    frames = open_images(path).frames()
    if split == "study":
        return frames["train"], frames["validation"]
    pool = pd.concat([frames[name] for name in TRAINING_SPLITS if name in frames], ignore_index=True)
    return by_split_file(pool, split)
