"""``python -m keras_odir.export MODEL OUT --format onnx|saved_model|torch``: a trained dual model (a keras_odir
``.keras``, torch_odir's or the study's ``.pth``) as a file other runtimes use, checked right after writing.

The exported graph is the model for inference with its BatchNorm folded into the convs (``keras_odir.folding``):
inputs ``left``, ``right`` float32 NHWC [batch, S, S, 3] (S: the model's input size after the centre crop,
normalised as its config says), outputs ``probabilities`` and ``logits`` [batch, 8]; metadata as
``odir_core.evaluation.export_metadata`` lists. The file is written beside OUT under a temporary name, loaded back
with its own runtime, run on a few inputs and compared with the source model (``CHECK_TOLERANCE``); only then is it
renamed to OUT. Runs on Keras' torch backend (the SavedModel part in a tensorflow subprocess).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import keras
import numpy as np

from keras_odir.cli_backend import BACKEND
from keras_odir.devices import on_device
from keras_odir.export_formats import FORMATS, SUFFIXES, ExportError
from keras_odir.folding import fold_batchnorm
from keras_odir.inference import read_dual_model
from keras_odir.weights import weight_table
from odir_core.atomic import atomic_folder, atomic_path
from odir_core.cli_config import add_config_option, parse_with_config
from odir_core.errors import InputError, OutputExistsError, run_cli
from odir_core.evaluation import export_metadata
from odir_core.evaluation.inference import TRAIN_CONFIG_HELP, model_config
from odir_core.evaluation.thresholds import THRESHOLDS_FILE, load_thresholds
from odir_core.model.model_spec import infer_architecture

TRACE_BATCH, CHECK_BATCH = 2, 3  # the batch the graph is traced with, and the other one it is checked with
CHECK_SEED = 0


def build_parser() -> argparse.ArgumentParser:
    """The export CLI's parser; --help explains every flag."""
    p = argparse.ArgumentParser(
        prog="python -m keras_odir.export",
        description="Export a trained dual model for other runtimes: ONNX (onnxruntime), a TensorFlow SavedModel or "
        "a torch.export program (.pt2). Inputs left/right float32 NHWC [batch, S, S, 3] preprocessed and normalised "
        "as the model's config.toml says; outputs probabilities and logits [batch, 8]; the run's config, labels, "
        "thresholds and provenance go with it as metadata. The written file is loaded back and checked against the "
        "model before it is renamed to OUT. Exit codes: 0 ok; 1 the export failed or did not pass its check; "
        "2 bad input (one error line); nothing is left at OUT unless it succeeded.",
    )
    add_config_option(p)
    p.add_argument("model", metavar="MODEL", help="trained model: RUN_DIR/best.keras, or a .pth/.pt (torch_odir's "
                   "or the study's); config.toml beside it (or --train-config) gives input size and normalisation")
    p.add_argument("out", metavar="OUT", help="the file to write (model.onnx, model.pt2) or, for saved_model, the "
                   "folder; never overwritten")
    p.add_argument("--format", required=True, choices=tuple(FORMATS),
                   help="onnx: ONNX opset 18 for onnxruntime (keras_odir/torch_odir predict and evaluate take it); "
                   "saved_model: TensorFlow SavedModel, endpoint and signature 'serve'; torch: torch.export program "
                   "(.pt2), runs with torch alone")
    p.add_argument("--train-config", metavar="FILE.toml", help=TRAIN_CONFIG_HELP)
    return p


def check_out(out: Path, fmt: str) -> None:
    """Refuse an OUT that exists, has the wrong suffix or lies in a folder that cannot be written."""
    if out.exists() or out.is_symlink():
        raise OutputExistsError(f"{out} already exists; choose another OUT or remove it first (never overwritten)")
    suffix = SUFFIXES.get(fmt)
    if suffix and out.suffix != suffix:
        raise InputError(f"{out}: --format {fmt} writes a {suffix} file; name OUT ...{suffix}")
    folder = out.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{out}: cannot write in {folder} (not a writable folder); choose another OUT")


def check_inputs(size: int, batch: int, seed: int) -> dict[str, np.ndarray]:
    """Deterministic random inputs of the exported graph (normalised-image-like values)."""
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal((batch, size, size, 3)).astype(np.float32)
            for name in export_metadata.INPUTS}


def compare(outputs: dict[str, np.ndarray], logits: np.ndarray) -> tuple[float, float]:
    """(max |diff|, tolerance) of an export's outputs against the source model's ``logits``: its logits against
    them, its probabilities against their sigmoid (infinite when a shape differs or a value is not finite)."""
    expected = {"logits": logits, "probabilities": 0.5 * (1.0 + np.tanh(0.5 * logits))}  # sigmoid, no overflow
    diffs = [np.abs(np.asarray(outputs[name], np.float64) - want) if np.shape(outputs[name]) == want.shape
             else np.array(np.inf) for name, want in expected.items()]
    diff = max(float(np.max(np.where(np.isfinite(d), d, np.inf))) for d in diffs)
    return diff, export_metadata.tolerance(logits)


def metadata_of(model: keras.Model, path: Path, config) -> dict[str, str]:
    """The metadata of ``model`` exported from ``path`` with its run ``config`` (the architecture read from the
    weights; thresholds.json beside it; its provenance record)."""
    backbone, head = infer_architecture(weight_table(model))
    if (config.backbone, config.head) != (backbone.name, head.name):
        raise InputError(f"{path}: the model is {backbone.name} + {head.name} but its config says {config.backbone} + "
                         f"{config.head}; pass the --train-config it was trained with")
    beside = path.parent / THRESHOLDS_FILE
    return export_metadata.build(config, backbone=backbone.name, head=head.name, source=path.name,
                                 thresholds=load_thresholds(beside) if beside.is_file() else None,
                                 trained_on=BACKEND.trained_on(path))


def export(model_path, out, fmt: str, train_config=None) -> tuple[float, float]:
    """Export ``model_path`` to ``out`` in ``fmt``; returns (max |logit diff|, tolerance) of the check."""
    model_path, out = Path(model_path), Path(out)
    if keras.backend.backend() != "torch":
        raise InputError(f"export runs on Keras' torch backend, not {keras.backend.backend()!r}: set KERAS_BACKEND=torch")
    check_out(out, fmt)
    if model_path.suffix not in BACKEND.model_suffixes:
        raise InputError(f"{model_path}: export takes a {'/'.join(BACKEND.model_suffixes)} model file")
    config = model_config(BACKEND, model_path, train_config)
    with on_device("cpu"):
        model = read_dual_model(model_path)
        metadata = metadata_of(model, model_path, config)
        size = config.input_size
        inputs = check_inputs(size, CHECK_BATCH, CHECK_SEED)
        logits = keras.ops.convert_to_numpy(model(inputs, training=False)).astype(np.float64)
        folded = fold_batchnorm(model)
        example = check_inputs(size, TRACE_BATCH, CHECK_SEED + 1)
        with (atomic_folder(out) if fmt == "saved_model" else atomic_path(out)) as tmp:
            outputs = FORMATS[fmt](folded, tmp, size, example, inputs, metadata)
            diff, tol = compare(outputs, logits)
            if not diff <= tol:
                raise ExportError(f"{out}: export check failed: max |logit diff| {diff:.3g} > tolerance {tol:.3g} "
                                  "(the exported graph does not compute the model); nothing written")
    return diff, tol


def _export_cli(args) -> int:
    diff, tol = export(args.model, args.out, args.format, args.train_config)
    print(f"export check: max |logit diff| {diff:.3g}, tolerance {tol:.3g}: ok")
    print(f"exported {args.model} to {args.out} ({args.format})")
    return 0


def main(argv=None) -> int:
    """Command-line entry point; returns the exit code."""
    args = parse_with_config(build_parser(), argv)
    return run_cli(_export_cli, args, prefix="keras_odir.export: error")


if __name__ == "__main__":
    sys.exit(main())
