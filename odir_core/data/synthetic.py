"""Synthetic ODIR-5K-like dataset: fundus photograph pairs with annotations, in any distribution layout.

Patients are drawn label-first from the label combinations of the real
training annotations, each finding placed in one eye or both, then given
per-eye diagnostic keywords from the dataset's vocabulary; images show a
visible sign for every keyword (see ``odir_core.data.synthetic_draw``).

Patient ``k`` depends only on (seed, k): its labels, keywords and pixels are
the same whatever the number of patients generated, and the same seed gives
the same bytes.

    python -m odir_core.synthetic --out data/syn --patients 600 --size 128 --seed 0
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from odir_core.atomic import atomic_folder, atomic_path, atomic_write_text
from odir_core.cli_help import DefaultsHelpFormatter
from odir_core.data.annotations import COLUMNS, write_annotations
from odir_core.data.imageio import encode_image
from odir_core.data.keywords import KEYWORD_SEPARATOR, NORMAL_KEYWORD, eye_labels, patient_labels
from odir_core.data.layouts import LAYOUTS, PREPARED, Layout
from odir_core.data.prepare import REPORT_COLUMNS
from odir_core.data.synthetic_draw import Camera, draw_eye, random_camera
from odir_core.errors import OutputExistsError, run_cli, sigint_ignored, worker_signals, writing
from odir_core.labels import LABELS, SPECIAL_IMAGES

# ----------------------------------------------------------------------------- statistics of the real set
# Measured once on the ODIR-5K training annotations (3500 patients,
# ../shared/reference/odir5k_annotations.xlsx); never read at run time.

# Patient label combination (N D G C A H M O as bits) -> number of patients.
LABEL_COMBINATIONS = {
    "10000000": 1140, "01000000": 697, "00000001": 551, "01000001": 282, "00010000": 146,
    "00100000": 120, "00001000": 117, "00000010": 107, "01000100": 44, "00000011": 40,
    "00000100": 36, "00100001": 35, "01010000": 31, "01100000": 23, "00010001": 22,
    "01000010": 14, "01001000": 14, "00001001": 14, "00101000": 10, "01010001": 8,
    "00000101": 8, "01100001": 8, "00100100": 5, "00100010": 5, "00001100": 4,
    "00100101": 3, "01000011": 3, "00010100": 2, "00001010": 2, "00110000": 2,
    "01000101": 1, "00110001": 1, "01001010": 1, "00100011": 1, "01100010": 1,
    "00101001": 1, "01001001": 1,
}
# Per label: patients with the finding in the left eye only, right eye only, both eyes.
LATERALITY = {
    "D": (214, 240, 670), "G": (66, 38, 111), "C": (58, 53, 101), "A": (20, 27, 115),
    "H": (6, 8, 89), "M": (31, 45, 85), "O": (315, 350, 201),
}
# Keyword -> eyes carrying it, per label (the frequent, unambiguous keywords of each label).
KEYWORDS = {
    "D": {
        "moderate non proliferative retinopathy": 997, "mild nonproliferative retinopathy": 552,
        "severe nonproliferative retinopathy": 161, "diabetic retinopathy": 54,
        "proliferative diabetic retinopathy": 25, "severe proliferative diabetic retinopathy": 10,
    },
    "G": {"glaucoma": 282, "suspected glaucoma": 44},
    "C": {"cataract": 313},
    "A": {"dry age-related macular degeneration": 228, "wet age-related macular degeneration": 49},
    "H": {"hypertensive retinopathy": 192},
    "M": {"pathological myopia": 246},
    "O": {
        "macular epiretinal membrane": 201, "epiretinal membrane": 187, "drusen": 180,
        "myelinated nerve fibers": 99, "laser spot": 95, "vitreous degeneration": 72,
        "refractive media opacity": 63, "spotted membranous change": 30, "chorioretinal atrophy": 26,
        "branch retinal vein occlusion": 26, "maculopathy": 26, "retinal pigmentation": 21,
        "white vessel": 19, "post retinal laser surgery": 18, "epiretinal membrane over the macula": 14,
        "retinitis pigmentosa": 13, "optic disc edema": 10, "central retinal vein occlusion": 10,
        "retinochoroidal coloboma": 9,
    },
}
# Same keyword in both eyes when a finding is bilateral (roughly as often as in the real set).
SAME_KEYWORD_BOTH_EYES = 0.65
# Non-decisive keywords: "lens dust" on 408 of 7000 eyes (3/4 of them written first),
# "low image quality" on 20.
LENS_DUST_RATE = 408 / 7000
LOW_QUALITY_RATE = 20 / 7000
# Age: mean 57.9, sd 11.7 overall; cataract patients 66.4, AMD 60.9, glaucoma 62.3.
AGE_BASE, AGE_SD = 56.0, 11.0
AGE_SHIFT = {"C": 9.5, "A": 4.5, "G": 5.5}
# Share of male patients: 0.54 overall, 0.42 with cataract, 0.37 with pathological myopia.
MALE_RATE, MALE_SHIFT = 0.555, {"C": -0.13, "M": -0.18}
# White-cornered hospital-preprocessed images: 16 of 7000 in the real set.
SPECIAL_RATE = 16 / 7000

# Keyword -> (drawn sign, strength); see odir_core.data.synthetic_draw.
KEYWORD_SIGNS = {
    "mild nonproliferative retinopathy": ("dr", 0.6),
    "moderate non proliferative retinopathy": ("dr", 1.0),
    "diabetic retinopathy": ("dr", 1.0),
    "severe nonproliferative retinopathy": ("dr", 1.5),
    "proliferative diabetic retinopathy": ("dr", 1.9),
    "severe proliferative diabetic retinopathy": ("dr", 2.2),
    "glaucoma": ("cup", 1.0),
    "suspected glaucoma": ("cup", 0.7),
    "cataract": ("haze", 1.0),
    "dry age-related macular degeneration": ("drusen", 1.0),
    "wet age-related macular degeneration": ("wet_amd", 1.0),
    "hypertensive retinopathy": ("hypertensive", 1.0),
    "pathological myopia": ("myopic", 1.0),
    "macular epiretinal membrane": ("erm", 1.0),
    "epiretinal membrane": ("erm", 0.8),
    "epiretinal membrane over the macula": ("erm", 1.0),
    "maculopathy": ("erm", 0.7),
    "drusen": ("drusen", 0.55),
    "myelinated nerve fibers": ("mnf", 1.0),
    "laser spot": ("laser", 1.0),
    "post retinal laser surgery": ("laser", 0.8),
    "vitreous degeneration": ("floaters", 1.0),
    "refractive media opacity": ("media", 1.0),
    "spotted membranous change": ("spots", 1.0),
    "chorioretinal atrophy": ("atrophy", 1.0),
    "retinochoroidal coloboma": ("atrophy", 1.4),
    "branch retinal vein occlusion": ("rvo", 1.0),
    "central retinal vein occlusion": ("rvo", 1.6),
    "retinal pigmentation": ("pigment", 0.6),
    "retinitis pigmentosa": ("pigment", 1.2),
    "optic disc edema": ("disc_edema", 1.0),
    "white vessel": ("white_vessel", 1.0),
}

LAYOUT_NAMES = tuple(LAYOUTS)
JPEG_QUALITY = 92
DEFAULT_PREPARED_SIZE = 512
MIN_SIZE = {"prepared": 16, "raw": 64}  # smallest --size: prepared image side / raw frame width, in px
RAW_WIDTH = (1000, 2400)  # raw camera image width range in pixels
RAW_DRAW_MAX = 1024  # raw frames: the FOV is drawn at most this size, then enlarged (real photos are soft)
KAGGLE_FULL_DF = "full_df.csv"
PREPARE_REPORT = "prepare_report.csv"
SYNTHETIC_MARKER = "synthetic.json"  # in a generated prepared folder: its images are not real photographs
KAGGLE_FILEPATH_PREFIX = "../input/ocular-disease-recognition-odir5k/ODIR-5K/Training Images/"
REPO_ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- patients

@dataclass(frozen=True)
class Patient:
    """One synthetic patient: annotation fields and what each eye shows."""

    id: int
    age: int
    sex: str
    left_keywords: tuple[str, ...]
    right_keywords: tuple[str, ...]

    @property
    def labels(self) -> np.ndarray:
        """Patient labels (8,) by the dataset's rules."""
        return patient_labels(KEYWORD_SEPARATOR.join(self.left_keywords), KEYWORD_SEPARATOR.join(self.right_keywords))


def _seeds(seed: int, pid: int) -> tuple[np.random.SeedSequence, np.random.SeedSequence]:
    """(labels, images) seed sequences of patient ``pid``: independent of how many patients are made."""
    labels, images = np.random.SeedSequence(seed, spawn_key=(pid,)).spawn(2)
    return labels, images


def _choice(rng, table: dict):
    keys = list(table)
    p = np.array([table[k] for k in keys], np.float64)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def sample_patient(seed: int, pid: int) -> Patient:
    """Labels, keywords, age and sex of patient ``pid`` (no pixels)."""
    rng = np.random.default_rng(_seeds(seed, pid)[0])
    combo = _choice(rng, LABEL_COMBINATIONS)
    present = [lab for lab, bit in zip(LABELS, combo) if bit == "1"]
    eyes: list[list[str]] = [[], []]  # left, right
    for lab in present:
        if lab == "N":
            continue
        where = int(rng.choice(3, p=np.array(LATERALITY[lab]) / sum(LATERALITY[lab])))
        first = _choice(rng, KEYWORDS[lab])
        if where < 2:
            eyes[where].append(first)
        else:
            second = first if rng.random() < SAME_KEYWORD_BOTH_EYES else _choice(rng, KEYWORDS[lab])
            eyes[0].append(first)
            eyes[1].append(second)
    for kws in eyes:
        rng.shuffle(kws)
        if not kws:
            kws.append(NORMAL_KEYWORD)
        if rng.random() < LENS_DUST_RATE:
            kws.insert(0 if rng.random() < 0.75 else len(kws), "lens dust")
        if rng.random() < LOW_QUALITY_RATE:
            kws.insert(0, "low image quality")
    age = AGE_BASE + sum(AGE_SHIFT.get(lab, 0.0) for lab in present) + AGE_SD * rng.standard_normal()
    male = MALE_RATE + sum(MALE_SHIFT.get(lab, 0.0) for lab in present)
    sex = "Male" if rng.random() < male else "Female"
    return Patient(pid, int(np.clip(round(age), 1, 91)), sex, tuple(eyes[0]), tuple(eyes[1]))


def annotation_row(p: Patient, ext: str = "jpg") -> dict:
    """One annotations row (COLUMNS) for a patient."""
    row = {
        "ID": p.id, "Patient Age": p.age, "Patient Sex": p.sex,
        "Left-Fundus": f"{p.id}_left.{ext}", "Right-Fundus": f"{p.id}_right.{ext}",
        "Left-Diagnostic Keywords": KEYWORD_SEPARATOR.join(p.left_keywords),
        "Right-Diagnostic Keywords": KEYWORD_SEPARATOR.join(p.right_keywords),
    }
    row.update(zip(LABELS, (int(v) for v in p.labels)))
    return row


def sample_annotations(patients: int, seed: int = 0, first_id: int = 0) -> pd.DataFrame:
    """The annotation table (COLUMNS) of patients first_id .. first_id+patients-1, without drawing images."""
    rows = [annotation_row(sample_patient(seed, pid)) for pid in range(first_id, first_id + patients)]
    return pd.DataFrame(rows, columns=COLUMNS)


# ----------------------------------------------------------------------------- images

def _eye_signs(rng, keywords, severity: float) -> dict:
    signs = {}
    for kw in keywords:
        if kw in KEYWORD_SIGNS:
            name, strength = KEYWORD_SIGNS[kw]
            signs[name] = max(signs.get(name, 0.0), strength * severity * float(rng.uniform(0.75, 1.25)))
    return signs


def _raw_frame(rng, fov: np.ndarray, max_width: int, special: bool) -> np.ndarray:
    """Place a FOV square on a camera frame: 1:1..3:2, black (or, special, white) surround, top/bottom
    of the circle sometimes cut by the frame."""
    width = int(rng.uniform(max_width * RAW_WIDTH[0] / RAW_WIDTH[1], max_width))
    aspect = rng.uniform(1.0, 1.5)
    height = int(round(width / aspect))
    notched = rng.random() < 0.35
    d = int(round(min(height * (rng.uniform(1.03, 1.12) if notched else rng.uniform(0.86, 0.98)), width * 0.98)))
    if d != fov.shape[0]:
        fov = cv2.resize(fov, (d, d), interpolation=cv2.INTER_AREA if d < fov.shape[0] else cv2.INTER_CUBIC)
    frame = np.zeros((height, width, 3), np.uint8)
    cx = width // 2 + int(rng.uniform(-0.02, 0.02) * width) - d // 2
    cy = height // 2 - d // 2
    x0, y0 = max(cx, 0), max(cy, 0)
    x1, y1 = min(cx + d, width), min(cy + d, height)
    frame[y0:y1, x0:x1] = fov[y0 - cy:y1 - cy, x0 - cx:x1 - cx]
    if special:  # hospital-preprocessed: white outside the FOV
        yy, xx = np.ogrid[:height, :width]
        outside = (xx - (cx + (d - 1) / 2)) ** 2 + (yy - (cy + (d - 1) / 2)) ** 2 > (d / 2 + 1) ** 2
        frame[outside] = 255
    return frame


def render_patient(seed: int, pid: int, size: int, raw: bool, severity: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(left, right) uint8 RGB images of patient ``pid``.

    Prepared (``raw=False``): size x size FOV crops, circle touching all sides.
    Raw: camera frames ``size*1000/2400 .. size`` px wide around a FOV of about the frame height.
    """
    patient = sample_patient(seed, pid)
    cam_ss, left_ss, right_ss = _seeds(seed, pid)[1].spawn(3)
    camera: Camera = random_camera(np.random.default_rng(cam_ss))
    images = []
    for side, kws, ss in ((-1, patient.left_keywords, left_ss), (1, patient.right_keywords, right_ss)):
        signs_ss, draw_ss, frame_ss = ss.spawn(3)
        signs = _eye_signs(np.random.default_rng(signs_ss), kws, severity)
        d = size if not raw else min(int(size / 1.5 * 1.12) + 2, RAW_DRAW_MAX)
        fov = draw_eye(draw_ss, d, side, signs, camera, lens_dust="lens dust" in kws)
        if raw:
            rng = np.random.default_rng(frame_ss)
            name = f"{pid}_{'left' if side < 0 else 'right'}.jpg"
            fov = _raw_frame(rng, fov, size, special=name in SPECIAL_IMAGES or rng.random() < SPECIAL_RATE)
        images.append(fov)
    return images[0], images[1]


def _render_task(args) -> int:
    seed, pid, size, raw, severity, folder = args
    cv2.setNumThreads(1)
    for name, img in zip(("left", "right"), render_patient(seed, pid, size, raw, severity)):
        Path(folder, f"{pid}_{name}.jpg").write_bytes(encode_image(img, "jpg", JPEG_QUALITY))
    return pid


# ----------------------------------------------------------------------------- layouts

def _kaggle_full_df(df: pd.DataFrame) -> pd.DataFrame:
    """Kaggle's full_df.csv: one row per image (right-eye block, then left), the 15 columns plus
    filepath, labels (that eye's label letters), target (their one-hot list) and filename."""
    blocks = []
    for side in ("Right", "Left"):
        part = df.copy()
        eyes = np.stack([eye_labels(k) for k in part[f"{side}-Diagnostic Keywords"]])
        part["filepath"] = KAGGLE_FILEPATH_PREFIX + part[f"{side}-Fundus"]
        part["labels"] = [str([lab for lab, v in zip(LABELS, e) if v]) for e in eyes]
        part["target"] = [str([int(v) for v in e]) for e in eyes]
        part["filename"] = part[f"{side}-Fundus"]
        blocks.append(part)
    return pd.concat(blocks, ignore_index=True)


def _write_set(root: Path, annotations: str, images: str, ids: range, seed, size, raw, severity, workers, desc):
    img_dir = root / images
    img_dir.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame([annotation_row(sample_patient(seed, pid)) for pid in ids], columns=COLUMNS)
    tasks = [(seed, pid, size, raw, severity, str(img_dir)) for pid in ids]
    bar = tqdm(total=len(tasks), desc=desc, unit="patient", disable=None)
    if workers > 1 and len(tasks) > 1:
        # Ctrl-C is the parent's: the workers ignore it (no tracebacks from them) and the pool is terminated
        with sigint_ignored():
            pool = multiprocessing.get_context("spawn").Pool(workers, worker_signals)
        with pool:
            for _ in pool.imap_unordered(_render_task, tasks, chunksize=max(1, len(tasks) // (workers * 16))):
                bar.update()
    else:
        for task in tasks:
            _render_task(task)
            bar.update()
    bar.close()
    ann = root / annotations
    ann.parent.mkdir(parents=True, exist_ok=True)
    write_annotations(df, ann)
    return df


def _zip_folder(folder: Path, target: Path) -> None:
    with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                info = zipfile.ZipInfo(path.relative_to(folder).as_posix(), date_time=(2019, 1, 1, 0, 0, 0))
                zf.writestr(info, path.read_bytes())


def generate(out, patients: int, size: int | None = None, seed: int = 0, layout: str = "prepared",
             zip: bool = False, severity: float = 1.0, workers: int | None = None,
             test_patients: int = 0) -> Path:
    """Generate a synthetic ODIR-5K-like dataset and return its folder (or zip file).

    layout: "prepared" (``images/<ID>_left.jpg`` + ``annotations.xlsx``, size x size FOV crops,
    default 512) or a raw distribution ("grand-challenge", "kaggle", "oia": camera frames at most
    ``size`` px wide, default 2400, in that release's folders; kaggle also gets ``full_df.csv``).
    test_patients: with "oia", that many more patients (IDs after the training ones) in each
    of its test sets. zip: write ``out`` as a zip file (``.zip`` added if missing) instead of a folder.
    Nothing is overwritten: ``out`` must not exist.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUT_NAMES)}")
    if patients < 1:
        raise ValueError(f"patients must be at least 1 (got {patients})")
    if test_patients and layout != "oia":
        raise ValueError("test_patients needs layout='oia' (the only release with annotated test sets)")
    if test_patients < 0:
        raise ValueError(f"test_patients must be >= 0 (got {test_patients})")
    if severity < 0:
        raise ValueError(f"severity must be >= 0 (got {severity})")
    spec: Layout = LAYOUTS[layout]
    raw = spec is not PREPARED
    size = int(size) if size is not None else (RAW_WIDTH[1] if raw else DEFAULT_PREPARED_SIZE)
    minimum = MIN_SIZE["raw" if raw else "prepared"]
    if size < minimum:
        raise ValueError(f"size must be at least {minimum} px for layout {layout!r} (got {size})")
    if workers is None:  # all cores, but no process start-up cost for small sets
        workers = min(os.cpu_count() or 1, max(1, (patients + test_patients) // 100))
    workers = max(1, int(workers))
    out = Path(out)
    if zip:
        out = out if out.suffix.lower() == ".zip" else out.with_name(out.name + ".zip")
        if out.exists():
            raise OutputExistsError(f"{out} already exists; choose another --out or remove it first")
        with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as tmp:
            folder = generate(Path(tmp) / "set", patients, size, seed, layout, False, severity, workers, test_patients)
            _zip_folder(folder, out)
        return out
    with atomic_folder(out) as root:
        train = _write_set(root, spec.annotations, spec.images, range(patients), seed, size, raw, severity,
                           workers, f"synthetic {layout}")
        if test_patients:
            start = patients
            for name, ann, imgs in spec.test_sets:
                _write_set(root, ann, imgs, range(start, start + test_patients), seed, size, raw, severity,
                           workers, f"synthetic {name}")
                start += test_patients
        if layout == "kaggle":
            _kaggle_full_df(train).to_csv(root / KAGGLE_FULL_DF, index=False)
        if spec is PREPARED:  # as `prepare` writes it when no image was skipped or repaired
            pd.DataFrame(columns=REPORT_COLUMNS).to_csv(root / PREPARE_REPORT, index=False)
            _mark_synthetic(root, patients=patients, size=size, seed=seed)
    return out


def _mark_synthetic(folder: Path, **params) -> None:
    atomic_write_text(folder / SYNTHETIC_MARKER, json.dumps({"generator": "odir_core.synthetic", **params}) + "\n")


def is_synthetic(folder) -> bool:
    """Whether a prepared folder holds generated images (``SYNTHETIC_MARKER``, written by :func:`generate`)."""
    return (Path(folder) / SYNTHETIC_MARKER).is_file()


def demo_dataset(path=None, patients: int = 600, size: int = 128, seed: int = 0) -> Path:
    """A prepared synthetic set ``demo_<patients>_<size>_<seed>`` under ``path`` (default
    ``data/synthetic`` in the repository), generated once and reused afterwards."""
    root = Path(path) if path is not None else REPO_ROOT / "data" / "synthetic"
    target = root / f"demo_{patients}_{size}_{seed}"
    if (target / PREPARED.annotations).is_file():
        if not is_synthetic(target):  # generated before sets were marked
            _mark_synthetic(target, patients=patients, size=size, seed=seed)
        return target
    try:
        generate(target, patients, size=size, seed=seed, layout="prepared")
    except OSError:  # another process may have finished the same set meanwhile
        if not (target / PREPARED.annotations).is_file():
            raise
    return target


# ----------------------------------------------------------------------------- preview

def contact_sheet(seed: int = 0, tile: int = 160, severity: float = 1.0) -> np.ndarray:
    """uint8 RGB sheet: for each label one patient with only that label (left | right), captioned."""
    rows = []
    for i, lab in enumerate(LABELS):
        target = np.eye(len(LABELS), dtype=int)[i]
        pid = next(p for p in range(100000) if np.array_equal(sample_patient(seed, p).labels, target))
        patient = sample_patient(seed, pid)
        left, right = render_patient(seed, pid, tile, raw=False, severity=severity)
        row = np.zeros((tile + 22, 2 * tile + 4, 3), np.uint8)
        row[22:, :tile], row[22:, tile + 4:] = left, right
        text = f"{lab} #{pid}  L: {'+'.join(patient.left_keywords)[:26]}  R: {'+'.join(patient.right_keywords)[:26]}"
        cv2.putText(row, text, (3, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (255, 255, 255), 1, cv2.LINE_AA)
        rows.append(row)
    half = (len(rows) + 1) // 2
    cols = [np.vstack(rows[:half]), np.vstack(rows[half:])]
    return np.hstack([cols[0], np.zeros((cols[0].shape[0], 8, 3), np.uint8), cols[1]])


def write_preview(path, seed: int = 0, tile: int = 160, severity: float = 1.0) -> Path:
    """Write the contact sheet as PNG (atomically)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(encode_image(contact_sheet(seed, tile, severity), "png"))
    return path


# ----------------------------------------------------------------------------- CLI

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m odir_core.synthetic", description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--out", help="output folder (or zip file with --zip); must not exist")
    p.add_argument("--patients", type=int, default=600, help="number of patients (two images each)")
    p.add_argument("--size", type=int, default=None,
                   help="prepared: image side in px (default 512, at least 16); raw layouts: largest frame width "
                   "(default 2400, at least 64)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes")
    p.add_argument("--layout", choices=LAYOUT_NAMES, default="prepared",
                   help="folder layout: a prepared folder or one of the ODIR-5K releases (raw camera frames)")
    p.add_argument("--zip", action="store_true", help="write a zip file instead of a folder")
    p.add_argument("--severity", type=float, default=1.0, help="scale of the visible disease signs (0 = none)")
    p.add_argument("--test-patients", type=int, default=0,
                   help="oia layout only: patients in each of the off-site and on-site test sets")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: all CPU cores, one per 100 patients at most)")
    p.add_argument("--preview", help="also write a contact sheet PNG here (one patient per label)")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if not args.out and not args.preview:
        _parser().error("give --out (a dataset) and/or --preview (a contact sheet)")
    return run_cli(_generate_cli, args)


def _generate_cli(args) -> int:
    # everything this CLI writes is output: an OSError is a failed write (exit 1)
    if args.out:
        with writing(args.out):
            path = generate(args.out, args.patients, args.size, args.seed, args.layout, args.zip,
                            args.severity, args.workers, args.test_patients)
        print(f"wrote {args.patients} synthetic patients to {path}")
    if args.preview:
        with writing(args.preview):
            print(f"wrote contact sheet {write_preview(args.preview, args.seed, severity=args.severity)}")
    return 0
