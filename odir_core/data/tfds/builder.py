"""The ``odir5k`` TensorFlow Datasets builder (ArrayRecord files; builds and reads without TensorFlow).

One example per patient. Configs: ``prepared_224`` / ``prepared_512`` store each photograph
after FOV crop -> circle crop -> FOV crop -> resize (``odir_core.data.preprocess``) as PNG;
``raw`` stores the original files. Any other ``prepared_<N>`` is built with
``Odir5kConfig.prepared(N)``. Splits: ``train`` / ``validation`` (the study split, special
patients dropped), ``special`` (the patients with one of the 16 hospital-preprocessed images),
and ``off_site_test`` / ``on_site_test`` when the source is OIA-ODIR with its test sets.
Records are stored in split order (the study split's row order), so index i of a split is
row i of the split's annotation table.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import re
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import tensorflow_datasets as tfds
from tqdm import tqdm

from odir_core.data.annotations import eye_labels, is_special, label_matrix
from odir_core.data.imageio import decode_image, encode_image
from odir_core.data.layouts import DetectedLayout, Layout, LayoutError, detect_layout
from odir_core.data.prepare import REPORT_COLUMNS, Source, _image_index, _read_source_annotations
from odir_core.data.preprocess import prepare_image
from odir_core.data.splits import study_split
from odir_core.errors import sigint_ignored, worker_signals
from odir_core.labels import LABELS, NUM_LABELS

SIDES = (("left", "Left-Fundus", "Left-Diagnostic Keywords"), ("right", "Right-Fundus", "Right-Diagnostic Keywords"))
MIN_SIZE = 8
ID_BITS = 32  # the records store the patient ID as an int32

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
ODIR-5K cannot be downloaded automatically (registration / licence acceptance).
Get one of these and put it (the folder, or the zip as downloaded) in the manual dir:
  - ODIR-2019 grand-challenge release, https://odir2019.grand-challenge.org/ :
    "ODIR-5K_Training_Annotations(Updated)_V2.xlsx" + "ODIR-5K_Training_Dataset/"
  - Kaggle "ocular-disease-recognition-odir5k",
    https://www.kaggle.com/datasets/andrewmvd/ocular-disease-recognition-odir5k :
    the downloaded archive.zip (ODIR-5K/ODIR-5K/data.xlsx + "Training Images/")
  - OIA-ODIR, https://github.com/nkicsl/OIA-ODIR : "Training Set/" (and, for the
    off_site_test / on_site_test splits, "Off-site Test Set/" and "On-site Test Set/")
  - a folder written by `python -m odir_core.prepare`
A wrapping top folder is fine, and '_' may stand for spaces. Then run
  python -m odir_core.tfds build --source PATH
"""

CITATION = """\
@inproceedings{li2021benchmark,
  title     = {A Benchmark of Ocular Disease Intelligent Recognition: One Shot for Multi-disease Detection},
  author    = {Li, Ning and Li, Tao and Hu, Chunyu and Wang, Kai and Kang, Hong},
  booktitle = {Benchmarking, Measuring, and Optimizing (Bench 2020)},
  series    = {Lecture Notes in Computer Science},
  volume    = {12614},
  pages     = {177--193},
  year      = {2021},
  publisher = {Springer}
}
"""


@dataclasses.dataclass(eq=False)
class Odir5kConfig(tfds.core.BuilderConfig):
    """``size``: side of the stored preprocessed images in pixels; None stores the original files."""

    size: int | None = None

    @classmethod
    def prepared(cls, size: int) -> "Odir5kConfig":
        """Config ``prepared_<size>``: FOV/circle-cropped images resized to size x size, PNG."""
        size = int(size)
        if size < MIN_SIZE:
            raise ValueError(f"prepared image size must be at least {MIN_SIZE} px (got {size})")
        return cls(
            name=f"prepared_{size}",
            size=size,
            description=f"FOV crop -> circle crop -> FOV crop -> {size}x{size} (odir_core.data.preprocess), PNG",
        )


RAW = Odir5kConfig(name="raw", description="the original photographs (re-encoded as PNG only when "
                   "grayscale, alpha, 16-bit or EXIF-rotated)")
CONFIGS = (Odir5kConfig.prepared(224), Odir5kConfig.prepared(512), RAW)


def config_by_name(name: str) -> Odir5kConfig:
    """One of CONFIGS by name, or a new ``prepared_<N>`` config."""
    for config in CONFIGS:
        if config.name == name:
            return config
    match = re.fullmatch(r"prepared_(\d+)", name)
    if match:
        return Odir5kConfig.prepared(int(match.group(1)))
    raise ValueError(f"unknown odir5k variant {name!r}: use {', '.join(c.name for c in CONFIGS)} or prepared_<size>")


def find_source(path) -> tuple[Source, DetectedLayout]:
    """The ODIR-5K source in a manual dir: the folder itself (any layout, possibly wrapped),
    else the first zip directly inside it that holds one; ``path`` may also be a zip."""
    path = Path(path)
    candidates = [path]
    if path.is_dir():
        candidates += sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".zip")
    problems = []
    for candidate in candidates:
        try:
            source = Source(candidate)
            return source, detect_layout(source.names())
        except (LayoutError, ValueError) as exc:
            problems.append(f"{candidate}: {str(exc).splitlines()[0]}")
    raise LayoutError(
        f"no ODIR-5K dataset found in the manual dir {path}:\n  " + "\n  ".join(problems)
        + "\n\n" + MANUAL_DOWNLOAD_INSTRUCTIONS
    )


def encode_eye(data: bytes, size: int | None, notes: list[str] | None = None) -> bytes:
    """The encoded image stored for one photograph: preprocessed to size x size as PNG, or
    (size None) the original bytes when they decode to the same RGB pixels as
    ``odir_core.data.imageio.decode_image``, else that decoding as PNG.
    Raises PreprocessError / ImageDecodeError for an unusable photograph."""
    if size:
        return encode_image(prepare_image(data, size, notes=notes), "png")
    img = decode_image(data)
    stored = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)  # what TFDS decoding gives
    if stored is not None and stored.dtype == np.uint8 and stored.shape == img.shape:
        if np.array_equal(cv2.cvtColor(stored, cv2.COLOR_BGR2RGB), img):
            return data
    if notes is not None:
        notes.append("re-encoded as PNG (grayscale, alpha, 16-bit or EXIF-rotated original)")
    return encode_image(img, "png")


_WORKER: dict = {}


def _init_pool_worker(*init) -> None:
    worker_signals()
    _init_worker(*init)


def _init_worker(source_path: str, size: int | None) -> None:
    cv2.setNumThreads(1)  # one image per process
    _WORKER.update(source=Source(source_path), size=size)  # a fresh zip handle per process


def _encode_patient(task):
    """(position, {side: bytes}, report rows) for one patient; never raises."""
    position, pid, members = task
    encoded, rows = {}, []
    for side, member in members:
        notes: list[str] = []
        try:
            encoded[side] = encode_eye(_WORKER["source"].read(member), _WORKER["size"], notes)
        except Exception as exc:  # a batch job reports a bad file and goes on
            rows.append((pid, side, member, "error", f"{type(exc).__name__}: {exc}"))
            continue
        if notes:
            rows.append((pid, side, member, "repaired", "; ".join(notes)))
    return position, encoded, rows


class Odir5k(tfds.core.GeneratorBasedBuilder):
    """ODIR-5K: 8-label ocular disease recognition from a patient's two fundus photographs."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = list(CONFIGS)
    DEFAULT_CONFIG_NAME = "prepared_512"
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

    def __init__(self, *, workers: int | None = None, source=None, **kwargs):
        """``workers``: processes preparing images (default: all CPU cores). ``source``: an ODIR-5K
        folder or zip to build from instead of looking in the manual dir. File format: ArrayRecord."""
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)
        self._source = source
        self._workers = max(1, int(workers if workers is not None else (os.cpu_count() or 1)))
        self._report: list[dict] = []

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.size
        shape = (size, size, 3) if size else (None, None, 3)

        def image(side):
            return tfds.features.Image(
                shape=shape, encoding_format="png" if size else None, doc=f"{side} eye fundus photograph, RGB"
            )

        def labels(doc):
            return tfds.features.Tensor(shape=(NUM_LABELS,), dtype=np.int32, doc=doc)

        order = " ".join(LABELS)
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "ODIR-5K (Ocular Disease Intelligent Recognition): patients with a left and a right "
                f"colour fundus photograph, diagnostic keywords per eye and 8 patient labels ({order})."
            ),
            features=tfds.features.FeaturesDict({
                "id": tfds.features.Scalar(np.int32, doc="patient ID"),
                "age": tfds.features.Scalar(np.int32, doc="age in years (-1: not recorded)"),
                "sex": tfds.features.Text(doc="'Female' or 'Male' ('' when not recorded)"),
                "left": image("left"),
                "right": image("right"),
                "left_file": tfds.features.Text(doc="file name of the left photograph in the source"),
                "right_file": tfds.features.Text(doc="file name of the right photograph in the source"),
                "left_keywords": tfds.features.Text(doc="diagnostic keywords of the left eye, '，'-separated"),
                "right_keywords": tfds.features.Text(doc="diagnostic keywords of the right eye, '，'-separated"),
                "labels": labels(f"patient labels, multi-hot in the order {order}"),
                "left_labels": labels("left-eye labels derived from its keywords by the dataset's rules"),
                "right_labels": labels("right-eye labels derived from its keywords by the dataset's rules"),
                "special": tfds.features.Scalar(
                    np.bool_, doc="one of the patient's images is among the 16 hospital-preprocessed ones"
                ),
            }),
            homepage="https://odir2019.grand-challenge.org/",
            citation=CITATION,
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,  # keep the split order: record i is row i of the split table
        )

    def _split_generators(self, dl_manager):
        source, found = find_source(self._source if self._source is not None else dl_manager.manual_dir)
        names = source.names()
        print(f"found the {found.layout.name} layout in {source.path}: {found.annotations} + {found.images}/")
        self._report = []
        df, index = self._table(source, names, found.annotations, found.images, "train/validation")
        kept = df[~is_special(df)]
        train, validation = study_split(kept)
        splits = {"train": (train, index), "validation": (validation, index)}
        special = df[is_special(df)].reset_index(drop=True)
        if len(special):
            splits["special"] = (special, index)
        for name, annotations, images in found.layout.test_sets:
            part = Layout(name, annotations, images, name)
            try:
                test = detect_layout(names, [part])
            except LayoutError:
                continue
            splits[name] = self._table(source, names, test.annotations, test.images, name)
        return {
            name: self._generate_examples(name, frame, index, str(source.path))
            for name, (frame, index) in splits.items()
        }

    def _table(self, source: Source, names, annotations: str, images: str, split: str):
        """(patients whose two files exist, file name -> member) of one annotations file; missing files reported."""
        df = _read_source_annotations(source, annotations, exclude_special=False, id_bits=ID_BITS)
        index = _image_index(names, images)
        present = np.ones(len(df), dtype=bool)
        for i, (pid, *files) in enumerate(zip(df["ID"], *(df[column] for _, column, _ in SIDES))):
            for (side, _, _), fname in zip(SIDES, map(str, files)):
                if fname.lower() not in index:
                    present[i] = False
                    self._add_report(split, (pid, side, fname, "error", f"missing: no {fname} in {images}/"))
        return df[present].reset_index(drop=True), index

    def _add_report(self, split: str, row: tuple) -> None:
        entry = dict(zip(REPORT_COLUMNS, row), split=split)
        entry["ID"] = int(entry["ID"])
        self._report.append(entry)
        tqdm.write(f"{entry['status']}: patient {entry['ID']} {entry['side']} ({entry['source']}): {entry['reason']}",
                   file=sys.stderr)
        self.info.metadata["report"] = list(self._report)

    def _patients(self, frame: pd.DataFrame, index: dict, source_path: str):
        tasks = [
            (i, int(row["ID"]), [(side, index[str(row[column]).lower()]) for side, column, _ in SIDES])
            for i, row in frame.iterrows()
        ]
        init = (source_path, self.builder_config.size)
        if self._workers <= 1 or len(tasks) <= 1:
            _init_worker(*init)
            yield from map(_encode_patient, tasks)
            return
        with sigint_ignored():  # Ctrl-C is the parent's: workers print no tracebacks, the pool is terminated
            pool = multiprocessing.Pool(min(self._workers, len(tasks)), _init_pool_worker, init)
        try:
            yield from pool.imap(_encode_patient, tasks, chunksize=max(1, min(16, len(tasks) // (self._workers * 8))))
        finally:
            pool.terminate()
            pool.join()

    def _generate_examples(self, split: str, frame: pd.DataFrame, index: dict, source_path: str):
        labels = label_matrix(frame).astype(np.int32)
        special = is_special(frame)
        for position, encoded, rows in self._patients(frame, index, source_path):
            for row in rows:
                self._add_report(split, row)
            if len(encoded) < 2:  # a patient needs both eyes
                continue
            row = frame.iloc[position]
            age = pd.to_numeric(row["Patient Age"], errors="coerce")
            example = {
                "id": int(row["ID"]),
                "age": int(age) if pd.notna(age) else -1,
                "sex": str(row["Patient Sex"]),
                "labels": labels[position],
                "special": bool(special[position]),
            }
            for side, column, keywords in SIDES:
                example[side] = encoded[side]
                example[f"{side}_file"] = str(row[column])
                example[f"{side}_keywords"] = str(row[keywords])
                example[f"{side}_labels"] = eye_labels(row[keywords]).astype(np.int32)
            yield position, example
