"""The evaluate CLI shared by keras_odir.evaluate and torch_odir.evaluate (framework-free).

Two sources of probabilities: a trained model on a prepared folder's split (``--model``), or an
existing probabilities file (``--probs``, e.g. the study's probs.xlsx) with its ground truth.
Both end in the same evaluation folder (odir_core.evaluation.reports.write_evaluation).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from odir_core.data import splits
from odir_core.data.annotations import label_matrix, read_annotations
from odir_core.data.dataset import DualEyeDataset
from odir_core.data.imageio import load_image
from odir_core.data.layouts import PREPARED
from odir_core.data.preprocess import resize_square
from odir_core.data.splits import split_frames
from odir_core.data.tfds import source as tfds_source
from odir_core.errors import OutputExistsError, run_cli
from odir_core.evaluation import reports
from odir_core.evaluation.ensemble import COMBINE_HELP, COMBINE_RULES, combine, member_scores
from odir_core.evaluation.inference import (
    DEVICE_HELP,
    TRAIN_CONFIG_HELP,
    TTA_HELP,
    TTA_MODES,
    Backend,
    InferenceError,
    load_model,
    predict_dataset,
)
from odir_core.evaluation.submission import check_submission, read_label_file
from odir_core.evaluation.thresholds import (
    THRESHOLD_METRICS,
    THRESHOLDS_FILE,
    VALIDATION_SOURCE,
    load_thresholds,
    save_thresholds,
    tune_thresholds,
)
from odir_core.labels import LABELS
from odir_core.cli_config import add_config_option, parse_with_config
from odir_core.training.run import resolve_data

SPLITS = ("val", "test", "all")
DISPLAY_SIZE = 256  # side of the eye images in the qualitative figure
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


@dataclass
class Evaluation:
    """What goes into an evaluation folder (see odir_core.evaluation.reports.write_evaluation)."""

    out: Path
    ids: np.ndarray
    y_true: np.ndarray
    y_prob: np.ndarray
    info: dict
    tuned: np.ndarray | None = None
    load_pair: Callable | None = None
    saved_thresholds: dict = field(default_factory=dict)  # file name in the folder -> (thresholds, source, n)
    caption: str = ""  # under every figure: what the model was trained on
    members: list | None = None  # an ensemble's members' scores (odir_core.evaluation.ensemble.member_scores)


def build_parser(backend: Backend) -> argparse.ArgumentParser:
    """The evaluate CLI's parser; --help explains every flag."""
    p = argparse.ArgumentParser(
        prog=f"python -m {backend.name}.evaluate",
        description="Evaluate a trained model on a split of a prepared folder, or an existing probabilities file, "
        "and write an evaluation folder: probs.xlsx, ground_truth.xlsx (the study's format), submission.csv "
        "(ODIR-2019 format), metrics.json, classification_report.txt, confusion/ROC/PR/qualitative figures "
        "and report.html. Exit code 2 with one error line on bad input.",
    )
    add_config_option(p)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", metavar=f"RUN_DIR/best{backend.model_suffix}", action="append",
                     help="trained model; its run folder's config.toml gives data, split, image size, crop, normalisation; "
                     "or an exported model.onnx (keras_odir.export), whose metadata gives them when no config.toml is "
                     f"beside it. Repeat it for an ensemble ({'/'.join(backend.model_suffixes)}/.onnx files, any mix of "
                     "backbones, sizes and frameworks): every model predicts the patients of the first one's data and split, "
                     "each prepared as its own config says, and the report gives each member's scores and the ensemble's")
    src.add_argument("--probs", metavar="FILE",
                     help="evaluate this probabilities file (xlsx/csv, columns ID,N,D,G,C,A,H,M,O) instead of a model; "
                     "it is checked like an ODIR-2019 submission against the ground truth (column order, row order, "
                     "missing patients)")
    p.add_argument("--truth", metavar="FILE",
                   help="with --probs: ground-truth labels (xlsx/csv, ID,N..O); default ground_truth.xlsx beside the "
                   "probabilities file, else the labels in --data's annotations")
    p.add_argument("--train-config", metavar="FILE.toml", help=TRAIN_CONFIG_HELP)
    p.add_argument("--data", metavar="DIR",
                   help="prepared folder (annotations.xlsx + images/) or built TFDS dataset; default: the one the model "
                   "was trained on. "
                   "With --probs: labels (when no ground-truth file) and images for the qualitative figure")
    p.add_argument("--images", metavar="DIR",
                   help="with --probs: folder of <ID>_left.* / <ID>_right.* images for the qualitative figure")
    p.add_argument("--split", choices=SPLITS, default="val",
                   help="which patients of --data a model is evaluated on: the run's validation split, the test part "
                   "of its split file, or all patients")
    p.add_argument("--out", metavar="DIR",
                   help="evaluation folder to create (must not exist); default RUN_DIR/eval-<split>[-tta-<mode>] "
                   "(or eval-<name> beside --probs), numbered -2, -3... when taken")
    p.add_argument("--tta", choices=TTA_MODES, default="none", help=TTA_HELP)
    p.add_argument("--ensemble", choices=COMBINE_RULES, default="mean", help=COMBINE_HELP)
    p.add_argument("--batch-size", type=int, default=16, help="patients per forward pass")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--thresholds", metavar="FILE",
                   help=f"per-label thresholds JSON reported beside 0.5; default {THRESHOLDS_FILE} beside the model when present")
    p.add_argument("--tune-thresholds", action="store_true",
                   help=f"tune each label's threshold on the validation split (with --probs: on the file's patients) "
                   f"and save them as {THRESHOLDS_FILE} beside the model (with --probs: in the evaluation folder)")
    p.add_argument("--threshold-metric", choices=THRESHOLD_METRICS, default="f1",
                   help="what --tune-thresholds maximises per label: F1 or Cohen kappa")
    return p


def _free_dir(base: Path) -> Path:
    """``base``, or base-2, base-3... : the first name not taken."""
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def _writable_parent(folder: Path) -> bool:
    return folder.is_dir() and os.access(folder, os.W_OK)


def _image_file(folder: Path, pid: int, side: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        path = folder / f"{pid}_{side}{suffix}"
        if path.is_file():
            return path
    return None


def _display(img: np.ndarray) -> np.ndarray:
    return resize_square(img, DISPLAY_SIZE) if max(img.shape[:2]) > DISPLAY_SIZE else img


def folder_pairs(folder):
    """load_pair for reports: <ID>_left.* / <ID>_right.* in ``folder``, None when absent or unreadable."""
    folder = Path(folder)

    def load_pair(pid: int):
        paths = [_image_file(folder, pid, side) for side in ("left", "right")]
        if None in paths:
            return None
        try:
            return tuple(_display(load_image(path)) for path in paths)
        except (OSError, ValueError):
            return None

    return load_pair


def _prepared(data: str) -> Path:
    path = Path(data)
    if not (path / PREPARED.annotations).is_file() or not (path / PREPARED.images).is_dir():
        raise InferenceError(
            f"{path}: not a prepared folder (needs {PREPARED.annotations} and {PREPARED.images}/); "
            "create one with `python -m odir_core.prepare --source RAW --out DIR`"
        )
    return path


def _split_frame(data: Path, split: str, config_split: str) -> pd.DataFrame:
    """The patients of ``split`` ("val", "test" or "all") of a prepared folder or built TFDS dataset."""
    if tfds_source.is_tfds_source(data):
        if split == "test":
            raise InferenceError(f"--split test: a TFDS dataset ({data}) is split into train/val only; use --split val or all")
        train, val = tfds_source.split_frames(data, config_split)
        return val if split == "val" else pd.concat([train, val], ignore_index=True)
    df = read_annotations(data / PREPARED.annotations)
    if split == "all":
        return df
    if split == "val":
        return split_frames(df, config_split)[1]
    if config_split == "study":
        raise InferenceError("--split test: the study split has no test part; use --split val or all, or train with a split file that has one")
    ids = splits.load_split(config_split).get("test")
    if not ids:
        raise InferenceError(f"--split test: the split file {config_split} has no test part")
    by_id = df.set_index("ID", drop=False)
    missing = [i for i in ids if i not in by_id.index]
    if missing:
        raise InferenceError(f"--split test: {len(missing)} test IDs of {config_split} are not in the data, e.g. {missing[:5]}")
    return by_id.loc[ids].reset_index(drop=True)


def _evaluate_probs(args) -> Evaluation:
    probs_path = Path(args.probs)
    probs = read_label_file(probs_path)
    truth_path = Path(args.truth) if args.truth else probs_path.parent / "ground_truth.xlsx"
    load_pair = folder_pairs(args.images) if args.images else None
    if args.truth or truth_path.is_file():
        check_submission(probs_path, truth_path)
        y_true = read_label_file(truth_path)[list(LABELS)].to_numpy()
        truth_desc = str(truth_path)
    elif args.data:
        data = _prepared(args.data)
        df = read_annotations(data / PREPARED.annotations, exclude_special=False).set_index("ID", drop=False)
        missing = [i for i in probs["ID"] if i not in df.index]
        if missing:
            raise InferenceError(f"{probs_path}: {len(missing)} patient(s) not in {data / PREPARED.annotations}, e.g. {missing[:5]}")
        y_true = label_matrix(df.loc[probs["ID"]]).astype(np.int64)
        truth_desc = str(data / PREPARED.annotations)
    else:
        raise InferenceError(f"{probs_path}: no ground truth: no ground_truth.xlsx beside it; pass --truth FILE or --data DIR")
    if load_pair is None and args.data:
        load_pair = folder_pairs(_prepared(args.data) / PREPARED.images)
    if args.out:
        out = Path(args.out)
    elif _writable_parent(probs_path.parent):
        out = _free_dir(probs_path.parent / f"eval-{probs_path.stem}")
    else:
        out = _free_dir(Path.cwd() / f"eval-{probs_path.parent.name}-{probs_path.stem}")
    info = {"title": f"{probs_path.parent.name}/{probs_path.name}", "probabilities": str(probs_path), "ground truth": truth_desc}
    y_prob = probs[list(LABELS)].to_numpy()
    reports.check_inputs(probs["ID"].to_numpy(), y_true, y_prob, sources=(truth_desc, str(probs_path)))  # before tuning
    result = Evaluation(out, probs["ID"].to_numpy(), y_true, y_prob, info, load_pair=load_pair)
    if args.thresholds:
        result.tuned = load_thresholds(args.thresholds)
        info["tuned thresholds"] = f"from {args.thresholds}"
    if args.tune_thresholds:
        result.tuned = tune_thresholds(y_true, y_prob, args.threshold_metric)
        info["tuned thresholds"] = (f"per-label {args.threshold_metric} maximised on these same patients "
                                    f"(optimistic), saved as {THRESHOLDS_FILE}")
        result.saved_thresholds[THRESHOLDS_FILE] = (result.tuned, f"tuned on {probs_path}", len(y_prob))
    return result


def _evaluate_model(args, backend: Backend, log) -> Evaluation:
    if len(args.model) > 1:
        return _evaluate_ensemble(args, backend, log)
    model = load_model(backend, args.model[0], train_config=args.train_config, device=args.device)
    config = model.config
    data, _ = resolve_data(args.data or config.data, log)
    frame = _split_frame(data, args.split, config.split)
    log(f"{backend.name}: {model.path} on {len(frame)} patients ({args.split} split of {data}), TTA {args.tta}")
    log(f"model {model.training_note}")

    def dataset(rows):
        return DualEyeDataset(data, rows, image_size=config.image_size, crop_size=config.crop_size,
                              normalize=config.normalize, train=False)

    ds = dataset(frame)
    y_prob = predict_dataset(model.predictor, ds, args.batch_size, args.tta, desc=args.split)
    y_true = label_matrix(frame).astype(np.int64)
    index = {int(pid): i for i, pid in enumerate(ds.ids)}

    def load_pair(pid: int):
        i = index[pid]
        return _display(ds.image(i, 0)), _display(ds.image(i, 1))

    info = {"title": f"{model.run_dir.name} ({args.split})", "model": str(model.path), "framework": backend.name,
            "trained on": model.training_note, "data": str(data), "split": f"{args.split} ({config.split})", "TTA": args.tta,
            "image size / crop": f"{config.image_size} / {config.crop_size or 'none'}"}
    tuned = None
    if args.thresholds or (model.thresholds_path.is_file() and not args.tune_thresholds):
        source = Path(args.thresholds) if args.thresholds else model.thresholds_path
        tuned = load_thresholds(source)
        info["tuned thresholds"] = f"from {source}"
    elif model.embedded_thresholds is not None and not args.tune_thresholds:
        tuned = model.embedded_thresholds
        info["tuned thresholds"] = f"recorded in {model.path} (the {THRESHOLDS_FILE} it was exported with)"
    if args.tune_thresholds:
        if args.split == "val":
            val_true, val_prob = y_true, y_prob
        else:
            val_frame = _split_frame(data, "val", config.split)
            val_prob = predict_dataset(model.predictor, dataset(val_frame), args.batch_size, args.tta, desc="val (tuning)")
            val_true = label_matrix(val_frame).astype(np.int64)
        tuned = tune_thresholds(val_true, val_prob, args.threshold_metric)
        replaced = model.thresholds_path.is_file()
        save_thresholds(model.thresholds_path, tuned, metric=args.threshold_metric,
                        source=f"{VALIDATION_SOURCE} ({config.split}) of {data}, TTA {args.tta}", n_patients=len(val_prob))
        log(f"{'replaced' if replaced else 'wrote'} {model.thresholds_path}")
        info["tuned thresholds"] = (f"per-label {args.threshold_metric} maximised on the validation split, saved to "
                                    f"{model.thresholds_path}" + (" (optimistic: same patients)" if args.split == "val" else ""))
    suffix = f"eval-{args.split}" + (f"-tta-{args.tta}" if args.tta != "none" else "")
    out = Path(args.out) if args.out else _free_dir(model.run_dir / suffix)
    return Evaluation(out, frame["ID"].to_numpy(), y_true, y_prob, info, tuned=tuned, load_pair=load_pair,
                      caption=f"model {model.training_note}")


def _evaluate_ensemble(args, backend: Backend, log) -> Evaluation:
    """Several ``--model``: each predicts the first one's split (prepared as its own config says); their
    probabilities are combined by ``--ensemble``; thresholds (``--thresholds``, or tuned on the ensemble's
    validation probabilities) go into the evaluation folder, as members' own thresholds do not apply."""
    models = [load_model(backend, path, train_config=args.train_config, device=args.device) for path in args.model]
    first = models[0].config
    data, _ = resolve_data(args.data or first.data, log)
    frames = {split: _split_frame(data, split, first.split) for split in dict.fromkeys([args.split, "val"])}
    needed = list(frames) if args.tune_thresholds else [args.split]
    log(f"{backend.name}: ensemble ({args.ensemble}) of {len(models)} models on {len(frames[args.split])} patients "
        f"({args.split} split of {data}), TTA {args.tta}")
    members: dict[str, dict[str, np.ndarray]] = {split: {} for split in needed}
    datasets = {}
    for i, model in enumerate(models):
        config = model.config
        log(f"member {i + 1}: {model.path}: {model.training_note}")
        for split in needed:
            ds = DualEyeDataset(data, frames[split], image_size=config.image_size, crop_size=config.crop_size,
                                normalize=config.normalize, train=False)
            datasets.setdefault(split, ds)
            members[split][str(model.path)] = predict_dataset(model.predictor, ds, args.batch_size, args.tta,
                                                              desc=f"{split} ({i + 1}/{len(models)})")
    y_true = label_matrix(frames[args.split]).astype(np.int64)
    y_prob = combine(list(members[args.split].values()), args.ensemble)
    shown = datasets[args.split]
    index = {int(pid): i for i, pid in enumerate(shown.ids)}

    def load_pair(pid: int):
        i = index[pid]
        return _display(shown.image(i, 0)), _display(shown.image(i, 1))

    info = {"title": f"ensemble of {len(models)} models ({args.split})", "framework": backend.name,
            "ensemble": f"{args.ensemble} of the members' probabilities",
            **{f"member {i + 1}": f"{m.path} ({m.config.backbone}, head {m.config.head}, "
               f"{m.config.image_size} px / crop {m.config.crop_size or 'none'}); {m.training_note}"
               for i, m in enumerate(models)},
            "data": str(data), "split": f"{args.split} ({first.split}, from member 1)", "TTA": args.tta}
    result = Evaluation(Path(args.out) if args.out else _free_dir(models[0].run_dir.parent / f"eval-ensemble-{args.split}"),
                        frames[args.split]["ID"].to_numpy(), y_true, y_prob, info, load_pair=load_pair,
                        caption=f"ensemble of {len(models)} models; member 1 {models[0].training_note}")
    result.members = member_scores(y_true, members[args.split])
    if args.thresholds:
        result.tuned = load_thresholds(args.thresholds)
        info["tuned thresholds"] = f"from {args.thresholds}"
    elif args.tune_thresholds:
        val_prob = combine(list(members["val"].values()), args.ensemble)
        val_true = label_matrix(frames["val"]).astype(np.int64)
        result.tuned = tune_thresholds(val_true, val_prob, args.threshold_metric)
        info["tuned thresholds"] = (f"per-label {args.threshold_metric} maximised on the ensemble's validation "
                                    f"probabilities, saved as {THRESHOLDS_FILE} in this folder"
                                    + (" (optimistic: same patients)" if args.split == "val" else ""))
        result.saved_thresholds[THRESHOLDS_FILE] = (result.tuned, f"{VALIDATION_SOURCE} ({first.split}) of {data}, "
                                                    f"ensemble ({args.ensemble}), TTA {args.tta}", len(val_prob))
    else:
        info["tuned thresholds"] = "none (the members' own thresholds do not apply to the ensemble)"
    return result


def _summary_lines(folder: Path) -> list[str]:
    summary = json.loads((folder / reports.FILES["metrics"]).read_text())
    lines = []
    for family in ("study", "challenge"):
        for setting, values in summary[family].items():
            text = "  ".join(f"{k} {v:.4f}" if v is not None else f"{k} n/a" for k, v in values.items())
            lines.append(f"{family:>9} {setting:>8}: {text}")
    for i, member in enumerate(summary.get("members", [])):
        text = "  ".join(f"{k} {v:.4f}" if v is not None else f"{k} n/a" for k, v in member["study"].items())
        lines.append(f"member {i + 1} study at_0.5: {text} ({member['model']})")
    return lines + [f"note: {w}" for w in summary["warnings"]]


def main(backend: Backend, argv=None) -> int:
    """Run the evaluate CLI; returns the exit code (0 ok, 2 bad input, 1 failure such as an unwritable --out,
    130 interrupted; one error line, see odir_core.errors)."""
    parser = build_parser(backend)
    args = parse_with_config(parser, argv)
    if bool(args.model) == bool(args.probs):
        parser.error("give one of --model or --probs")
    return run_cli(_evaluate_cli, backend, args, prefix=f"{backend.name}.evaluate: error")


def _evaluate_cli(backend: Backend, args) -> int:
    def log(line: str) -> None:
        print(line, file=sys.stderr)

    if args.batch_size < 1:
        raise InferenceError(f"--batch-size {args.batch_size}: must be at least 1")
    if args.out and Path(args.out).exists() and (not Path(args.out).is_dir() or any(Path(args.out).iterdir())):
        raise OutputExistsError(f"--out {args.out} already exists and is not an empty folder; choose a new folder")
    ev = _evaluate_probs(args) if args.probs else _evaluate_model(args, backend, log)
    ev.info["evaluated"] = dt.datetime.now().isoformat(timespec="seconds")

    def save_thresholds_into(folder: Path) -> None:
        for name, (thresholds, source, n) in ev.saved_thresholds.items():
            save_thresholds(folder / name, thresholds, metric=args.threshold_metric, source=source, n_patients=n)

    folder = reports.write_evaluation(ev.out, ev.ids, ev.y_true, ev.y_prob, tuned=ev.tuned,
                                      load_pair=ev.load_pair, info=ev.info, after=save_thresholds_into, caption=ev.caption,
                                      members=ev.members)
    print("\n".join(_summary_lines(folder)))
    print(f"evaluation written to {folder} (open {folder / reports.FILES['report']})")
    return 0

