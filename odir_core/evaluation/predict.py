"""The predict CLI shared by keras_odir.predict and torch_odir.predict (framework-free).

Raw photographs in: the training chain (FOV crop, circle crop, FOV crop, resize, centre crop,
normalisation) is applied from the model's run config. One patient (LEFT RIGHT) prints its
labels and can draw a figure (optionally with Grad-CAM); ``--batch CSV`` does many patients,
skipping and listing the ones whose images cannot be used.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from odir_core.atomic import atomic_path
from odir_core.data.augment import center_crop
from odir_core.data.preprocess import prepare_image
from odir_core.errors import OutputExistsError, run_cli, writing
from odir_core.evaluation import onnx_predictor, plots
from odir_core.evaluation.ensemble import COMBINE_HELP, COMBINE_RULES, combine
from odir_core.evaluation.inference import (
    DEVICE_HELP,
    ONNX_SUFFIX,
    TRAIN_CONFIG_HELP,
    TTA_HELP,
    TTA_MODES,
    USER_ERRORS,
    Backend,
    InferenceError,
    Model,
    choose_gradcam_stage,
    load_model,
    model_config,
    model_input,
    predict_batch,
    prepare_photo,
)
from odir_core.evaluation.thresholds import (
    DEFAULT_THRESHOLD,
    THRESHOLDS_FILE,
    as_thresholds,
    load_thresholds,
    thresholds_origin,
)
from odir_core.labels import LABEL_NAMES, LABELS
from odir_core.scores import binarize
from odir_core.spreadsheets import quote_csv
from odir_core.training.config import TrainConfig
from odir_core.cli_config import add_config_option, parse_with_config

BATCH_COLUMNS = ("left", "right")
DISPLAY_SIZE = 256  # px: the least side of the eyes in a prediction figure
EXIT_OK, EXIT_PARTIAL, EXIT_BAD_INPUT = 0, 1, 2


def build_parser(backend: Backend) -> argparse.ArgumentParser:
    """The predict CLI's parser; --help explains every flag."""
    p = argparse.ArgumentParser(
        prog=f"python -m {backend.name}.predict",
        description="Predict the eight ODIR-5K labels of a patient from raw left and right fundus photographs "
        "(preprocessed as in training, from the model's config.toml). Exit codes: 0 ok; 1 some --batch rows "
        "failed (listed), or an output could not be written (one error line); 2 bad input (missing/corrupt/non-fundus "
        "image, bad model or CSV), one error line; 130 interrupted.",
    )
    add_config_option(p)
    p.add_argument("--model", metavar=f"RUN_DIR/best{backend.model_suffix}", action="append",
                   help="trained model (required); config.toml beside it gives image size, crop and normalisation; "
                   "or an exported model.onnx (keras_odir.export; onnxruntime only), whose metadata gives them when "
                   "no config.toml is beside it. Repeat it for an ensemble (any mix of model files, backbones and input "
                   "sizes): each model sees the photographs prepared as its own config says; their probabilities are "
                   "combined by --ensemble")
    p.add_argument("--ensemble", choices=COMBINE_RULES, default="mean", help=COMBINE_HELP)
    p.add_argument("--train-config", metavar="FILE.toml", help=TRAIN_CONFIG_HELP)
    p.add_argument("images", nargs="*", metavar="LEFT RIGHT", help="the patient's left-eye and right-eye photographs")
    p.add_argument("--batch", metavar="CSV",
                   help="many patients: a CSV with columns left,right (image paths, relative to the CSV's folder) and "
                   "optionally id; writes a predictions CSV, skipping and listing unusable rows")
    p.add_argument("--out", metavar="FILE",
                   help="one patient: save a figure (eyes + probabilities) as this PNG; with --batch: the predictions "
                   "CSV (default <CSV>_predictions.csv beside the input, numbered when taken). Never overwritten")
    p.add_argument("--figures", metavar="DIR",
                   help="with --batch: also save one figure per patient, <id>.png, in this folder (existing ones are kept)")
    p.add_argument("--gradcam", action="store_true",
                   help="overlay a Grad-CAM heatmap of the last backbone stage on each eye in the figure(s)")
    p.add_argument("--gradcam-label", choices=LABELS,
                   help="label the Grad-CAM explains (default: the patient's most probable label)")
    p.add_argument("--tta", choices=TTA_MODES, default="none", help=TTA_HELP)
    p.add_argument("--thresholds", metavar="FILE",
                   help=f"per-label thresholds JSON; default {THRESHOLDS_FILE} beside the model when present (one "
                   "model), else 0.5")
    p.add_argument("--batch-size", type=int, default=8, help="with --batch: patients per forward pass")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    return p


def choose_thresholds(args, models: list[Model]) -> tuple[np.ndarray, str, str | None]:
    """The thresholds to apply (--thresholds, else thresholds.json beside the model, else those an exported model
    records, else 0.5), a line saying which and where they come from, and a warning when they were tuned on the
    validation patients of the model's own run. An ensemble takes --thresholds or 0.5: its members' own thresholds
    do not apply to it."""
    model = models[0]
    if args.thresholds:
        path, found = Path(args.thresholds), "given with --thresholds"
    elif len(models) > 1:
        return (as_thresholds(DEFAULT_THRESHOLD), f"thresholds: {DEFAULT_THRESHOLD} for every label (default for an "
                "ensemble: its members' own thresholds do not apply; give --thresholds FILE)", None)
    elif model.thresholds_path.is_file():
        path, found = model.thresholds_path, "found beside the model"
    elif model.embedded_thresholds is not None:
        return (as_thresholds(model.embedded_thresholds), f"thresholds: recorded in {model.path} (the {THRESHOLDS_FILE} "
                "it was exported with)", None)
    else:
        return (as_thresholds(DEFAULT_THRESHOLD), f"thresholds: {DEFAULT_THRESHOLD} for every label (default: no "
                f"--thresholds given and no {THRESHOLDS_FILE} beside the model)", None)
    thresholds = load_thresholds(path)
    how, validation_patients = thresholds_origin(path)
    warning = None
    if validation_patients is not None and path.resolve().parent == model.run_dir.resolve():
        warning = (f"warning: {path} was tuned on the {validation_patients} validation patients of this model's own "
                   "run: its predictions for those patients are optimistic. Pass --thresholds FILE for other thresholds.")
    return thresholds, f"thresholds: {path} ({found}; {how})", warning


def _report_model(models: list[Model], rule: str, threshold_text: str, warning: str | None) -> None:
    if len(models) == 1:
        print(f"model {models[0].path}: {models[0].training_note}")
    else:
        print(f"ensemble ({rule}) of {len(models)} models:")
        for i, model in enumerate(models):
            print(f"  member {i + 1}: {model.path}: {model.training_note}")
    print(threshold_text)
    if warning:
        print(warning, file=sys.stderr)


def _predicted(probs, thresholds) -> list[str]:
    return [label for label, flag in zip(LABELS, binarize(np.asarray(probs)[None], thresholds)[0]) if flag]


def format_prediction(probs, thresholds) -> str:
    """Label, name, probability, threshold and a mark for predicted labels, then the predicted list."""
    width = max(len(name) for name in LABEL_NAMES.values())
    chosen = _predicted(probs, thresholds)
    lines = [f"{'':2}{'label':<{width + 2}}{'probability':>12}{'threshold':>11}"]
    for label, p, t in zip(LABELS, probs, thresholds):
        mark = "  <- predicted" if label in chosen else ""
        lines.append(f"{label:<2}{LABEL_NAMES[label]:<{width + 2}}{p:>12.4f}{t:>11.2f}{mark}")
    lines.append("predicted: " + (", ".join(f"{label} ({LABEL_NAMES[label]})" for label in chosen) or "none above threshold"))
    return "\n".join(lines)


def _new_file(path: Path) -> Path:
    if path.exists():
        raise OutputExistsError(f"{path} already exists; choose another name or remove it first")
    return path


def _figure(model: Model, paths, left_x, right_x, probs, thresholds, args, title, path: Path) -> None:
    """The prediction figure of the photographs ``paths`` (left, right), captioned with what the model was
    trained on; Grad-CAM on the stage ``choose_gradcam_stage`` picks for the model's input size."""
    heatmaps, label = None, ""
    if args.gradcam:
        target = args.gradcam_label or LABELS[int(np.argmax(probs))]
        stage, (h, w) = choose_gradcam_stage(model.predictor.gradcam_stages(left_x.shape[:2]))
        heatmaps = model.predictor.gradcam(left_x[None], right_x[None], LABELS.index(target), stage=stage)
        label = f"{target}, {stage} map {h}x{w}"
    shown = [display_image(p, model.config) for p in paths]
    fig = plots.prediction_figure(shown[0], shown[1], probs, thresholds, title=title, heatmaps=heatmaps, gradcam_label=label)
    with writing(path):
        plots.save_figure(fig, path, caption=f"model {model.training_note}")


def display_image(source, config) -> np.ndarray:
    """A photograph (path or encoded bytes) as a figure shows it: prepared as for the model but at least ``DISPLAY_SIZE`` px (the
    model's inputs may be far smaller), centre-cropped by the model's crop fraction."""
    size = max(config.image_size, DISPLAY_SIZE)
    img = prepare_image(source, size, check_size=False)  # the photograph passed the size rule at the model's size
    if config.crop_size and config.crop_size != config.image_size:
        img = center_crop(img, round(size * config.crop_size / config.image_size))
    return img


def pair_inputs(paths, configs: list[TrainConfig]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (left, right) model inputs of one patient's photographs ``paths`` for each of ``configs`` (each
    prepared at its config's size, once per size). Raises the preprocessing's errors for an unusable image."""
    prepared: dict[int, list[np.ndarray]] = {}
    inputs = []
    for config in configs:
        if config.image_size not in prepared:
            prepared[config.image_size] = [prepare_photo(path, config) for path in paths]
        left, right = prepared[config.image_size]
        inputs.append((model_input(left, config), model_input(right, config)))
    return inputs


def predict_members(models: list[Model], inputs: list[tuple[np.ndarray, np.ndarray]], tta: str,
                    rule: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """(n, 8) probabilities of a batch, combined by ``rule`` over ``models`` (``inputs``: each one's (left, right)
    NHWC batch), and each model's own."""
    each = [predict_batch(model.predictor, left, right, tta) for model, (left, right) in zip(models, inputs)]
    return (each[0] if len(each) == 1 else combine(each, rule)), each


def format_members(each: list[np.ndarray], probs: np.ndarray) -> str:
    """Per label, each member's probability and the ensemble's."""
    header = "".join(f"{f'member {i + 1}':>11}" for i in range(len(each)))
    lines = [f"{'label':<7}{header}{'ensemble':>11}"]
    for j, label in enumerate(LABELS):
        lines.append(f"{label:<7}" + "".join(f"{p[j]:>11.4f}" for p in each) + f"{probs[j]:>11.4f}")
    return "\n".join(lines)


def predict_one(backend: Backend, args) -> int:
    """One patient: print the prediction, optionally save the figure. Images are checked before the models load."""
    if len(args.images) != 2:
        raise InferenceError(f"give exactly two photographs, LEFT RIGHT (got {len(args.images)}), or --batch CSV")
    out = _new_file(Path(args.out)) if args.out else None
    configs = [model_config(backend, path, args.train_config) for path in args.model]
    inputs = pair_inputs(args.images, configs)
    models = [load_model(backend, path, config, device=args.device) for path, config in zip(args.model, configs)]
    thresholds, threshold_text, warning = choose_thresholds(args, models)
    probs, each = predict_members(models, [(left[None], right[None]) for left, right in inputs], args.tta, args.ensemble)
    probs, each = probs[0], [p[0] for p in each]
    _report_model(models, args.ensemble, threshold_text, warning)
    print(f"left {args.images[0]}, right {args.images[1]} (TTA {args.tta})")
    if len(models) > 1:
        print(format_members(each, probs))
    print(format_prediction(probs, thresholds))
    if out is not None:
        _figure(models[0], args.images, *inputs[0], probs, thresholds, args,
                f"{Path(args.images[0]).name} + {Path(args.images[1]).name}", out)
        print(f"figure written to {out}")
    return EXIT_OK


def _figure_name(patient_id: str) -> str:
    """The file name of a patient's --figures PNG: the id with characters other than letters, digits, _ . - as _."""
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', patient_id)}.png"


def _rows(index) -> str:
    return ", ".join(str(i + 2) for i in index)  # CSV rows as a spreadsheet numbers them (header = 1)


def _check_unique_ids(frame: pd.DataFrame, path: Path, figures: bool) -> None:
    """Refuse a --batch CSV whose ids repeat, or (with ``figures``) would share a figure file, naming ids and rows.

    Figure names are compared ignoring case, as a case-insensitive file system would."""
    repeated = frame[frame["id"].duplicated(keep=False)]
    if not repeated.empty:
        found = "; ".join(f"duplicate id {pid} in rows {_rows(rows.index)}" for pid, rows in repeated.groupby("id", sort=False))
        raise InferenceError(f"--batch {path}: {found}; give each patient an id of its own")
    if not figures:
        return
    names = frame["id"].map(_figure_name)
    shared = frame[names.str.casefold().duplicated(keep=False)]
    if not shared.empty:
        found = "; ".join(f"ids {', '.join(map(repr, rows['id']))} in rows {_rows(rows.index)} share the figure file "
                          f"{names[rows.index[0]]}" for _, rows in shared.groupby(names.str.casefold(), sort=False))
        raise InferenceError(f"--batch {path}: {found}; give ids that differ in letters, digits, '_', '.' or '-'")


def read_batch_csv(path: Path) -> pd.DataFrame:
    """The --batch CSV with columns id, left, right (absolute paths); id defaults to the row number."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise InferenceError(f"--batch {path}: file not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InferenceError(f"--batch {path}: not a readable CSV ({exc})") from None
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    missing = [c for c in BATCH_COLUMNS if c not in frame.columns]
    if missing:
        raise InferenceError(f"--batch {path}: missing column(s) {', '.join(missing)}; the header needs left,right (and optionally id)")
    if frame.empty:
        raise InferenceError(f"--batch {path}: no rows")
    if "id" not in frame.columns:
        frame.insert(0, "id", [str(i + 1) for i in range(len(frame))])
    for col in BATCH_COLUMNS:
        frame[col] = [str(p if Path(p).is_absolute() else path.parent / p) for p in frame[col]]
    return frame[["id", *BATCH_COLUMNS]].reset_index(drop=True)


def predict_many(models: list[Model], args, thresholds, frame: pd.DataFrame) -> int:
    """--batch: predict every row of ``frame`` (read_batch_csv), skip and list unusable ones, write the predictions
    CSV atomically."""
    csv_path = Path(args.batch)
    if args.out:
        out = _new_file(Path(args.out))
    else:
        out, n = csv_path.with_name(f"{csv_path.stem}_predictions.csv"), 1
        while out.exists():
            n += 1
            out = csv_path.with_name(f"{csv_path.stem}_predictions-{n}.csv")
    figures = Path(args.figures) if args.figures else None
    if figures is not None:
        with writing(figures):
            figures.mkdir(parents=True, exist_ok=True)
    probs = np.full((len(frame), len(LABELS)), np.nan)
    errors = [""] * len(frame)
    bar = tqdm(total=len(frame), desc="predict", unit="patient")
    for start in range(0, len(frame), args.batch_size):
        rows, pairs = [], []
        for i in range(start, min(start + args.batch_size, len(frame))):
            try:
                pairs.append(pair_inputs([frame.at[i, side] for side in BATCH_COLUMNS], [m.config for m in models]))
            except USER_ERRORS as exc:
                errors[i] = str(exc)
                continue
            rows.append(i)
        if rows:
            inputs = [tuple(np.stack([pair[m][side] for pair in pairs]) for side in (0, 1)) for m in range(len(models))]
            probs[rows] = predict_members(models, inputs, args.tta, args.ensemble)[0]
            left_x, right_x = inputs[0]
            if figures is not None:
                for k, i in enumerate(rows):
                    target = figures / _figure_name(frame.at[i, "id"])
                    if target.exists():
                        errors[i] = f"figure {target} already exists; not overwritten"
                        continue
                    _figure(models[0], [frame.at[i, side] for side in BATCH_COLUMNS], left_x[k], right_x[k], probs[i],
                            thresholds, args, f"patient {frame.at[i, 'id']}", target)
        bar.update(min(args.batch_size, len(frame) - start))
    bar.close()
    result = frame.copy()
    for j, label in enumerate(LABELS):
        result[label] = probs[:, j]
    result["predicted"] = [" ".join(_predicted(p, thresholds)) if not np.isnan(p).any() else "" for p in probs]
    result["error"] = errors
    with writing(out), atomic_path(out) as tmp:
        quote_csv(result).to_csv(tmp, index=False, float_format="%.6f")
    failed = [i for i, e in enumerate(errors) if e]
    ok = len(frame) - sum(1 for i in failed if np.isnan(probs[i]).any())
    print(f"{ok} of {len(frame)} patients predicted; written to {out}")
    for i in failed:
        print(f"skipped/failed row {i + 2} (id {frame.at[i, 'id']}): {errors[i]}", file=sys.stderr)
    if ok == 0:
        return EXIT_BAD_INPUT
    return EXIT_PARTIAL if failed else EXIT_OK


def main(backend: Backend, argv=None) -> int:
    """Run the predict CLI; returns the exit code (see build_parser's description and odir_core.errors)."""
    parser = build_parser(backend)
    args = parse_with_config(parser, argv)
    if not args.model:
        parser.error("--model is required")
    return run_cli(_predict_cli, backend, args, prefix=f"{backend.name}.predict: error")


def _predict_cli(backend: Backend, args) -> int:
    if args.batch and args.images:
        raise InferenceError("give either LEFT RIGHT or --batch CSV, not both")
    if args.figures and not args.batch:
        raise InferenceError("--figures is for --batch; for one patient use --out fig.png")
    if args.gradcam and len(args.model) > 1:
        raise InferenceError("--gradcam explains one model: give one --model (an ensemble has no single map)")
    if args.gradcam and not (args.out if not args.batch else args.figures):
        raise InferenceError("--gradcam draws on the figure: pass --out fig.png (or --figures DIR with --batch)")
    if args.batch_size < 1:
        raise InferenceError(f"--batch-size {args.batch_size}: must be at least 1")
    if args.gradcam and Path(args.model[0]).suffix == ONNX_SUFFIX and Path(args.model[0]).is_file():
        raise onnx_predictor.gradcam_refusal(args.model[0], onnx_predictor.read_metadata(args.model[0]))
    for path in ([] if args.batch else args.images):
        if not Path(path).is_file():
            raise InferenceError(f"{path}: image file not found")
    if not args.batch:
        return predict_one(backend, args)
    frame = read_batch_csv(Path(args.batch))
    _check_unique_ids(frame, Path(args.batch), figures=bool(args.figures))
    models = [load_model(backend, path, train_config=args.train_config, device=args.device) for path in args.model]
    thresholds, threshold_text, warning = choose_thresholds(args, models)
    _report_model(models, args.ensemble, threshold_text, warning)
    return predict_many(models, args, thresholds, frame)
