"""Per-pair latency of an exported ONNX model against the Keras model it came from, and serve's start-up.

    KERAS_BACKEND=torch .venv/bin/python benchmarks/serve_latency.py [--rounds 15] [--sizes 224 448]
        [--serve-python VENV/bin/python]

A random-weight ResNet50 (head v0) at each size is saved as a run folder (best.keras, config.toml) and
exported with ``python -m keras_odir.export --format onnx``. Per-pair latency: one patient (batch 1) through
``Predictor.predict`` on a real photograph pair prepared as predict prepares it, for the ONNX predictor
(onnxruntime) and keras_odir.predict's Predictor on the torch backend, in interleaved rounds (A, B, A, B, ...)
after warm-up; printed as the median and the range in ms. Start-up: from starting ``python -m
keras_odir.serve --model MODEL --port 0`` to the first 200 answer of ``POST /v1/predict`` (median of 3), for
the .onnx model under ``--serve-python`` (a virtual environment with ``.[serve]`` alone) and the .keras model
under this interpreter.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
PHOTOS = ("raw/raw_0.png", "raw/raw_2.png")  # in the reference folder's real_samples/


def reference_photos() -> tuple[Path, Path]:
    from reference_data import REAL_SAMPLES

    photos = tuple(REAL_SAMPLES / name for name in PHOTOS)
    missing = [str(p) for p in photos if not p.is_file()]
    if missing:
        sys.exit(f"missing {', '.join(missing)}: set ODIR_REFERENCE to the folder of the study's reference files")
    return photos


def make_models(folder: Path, size: int) -> tuple[Path, Path]:
    """(best.keras, model.onnx) of a random-weight ResNet50 v0 at ``size`` px in a run folder under ``folder``."""
    from keras_odir.export import main as export
    from keras_odir.model import build_dual_model
    from odir_core.training.config import TrainConfig
    from odir_core.training.config_files import save_config

    run = folder / f"run{size}"
    run.mkdir(parents=True)
    save_config(TrainConfig(data="synthetic", image_size=size, crop_size=size, head="v0", weights="none"),
                run / "config.toml")
    build_dual_model(head="v0", image_size=size).save(run / "best.keras")
    with contextlib.redirect_stdout(io.StringIO()):  # its report would split the table
        assert export([str(run / "best.keras"), str(run / "model.onnx"), "--format", "onnx"]) == 0
    return run / "best.keras", run / "model.onnx"


def pair_latencies(models: dict, photos, rounds: int, warmup: int = 3) -> dict[str, list[float]]:
    """ms per pair of each model's Predictor.predict, in interleaved rounds."""
    from keras_odir.cli_backend import BACKEND
    from odir_core.evaluation.inference import load_model, model_input, prepare_photo

    loaded = {name: load_model(BACKEND, path, device="cpu") for name, path in models.items()}
    config = next(iter(loaded.values())).config
    left, right = (model_input(prepare_photo(p, config), config)[None] for p in photos)
    times: dict[str, list[float]] = {name: [] for name in loaded}
    for k in range(warmup + rounds):
        for name, model in loaded.items():
            start = time.perf_counter()
            model.predictor.predict(left, right)
            if k >= warmup:
                times[name].append(1000 * (time.perf_counter() - start))
    return times


def first_prediction_s(python: str, model: Path, photos) -> float:
    """Seconds from starting the serve command to its first 200 answer of POST /v1/predict."""
    from serve_helpers import post_photos

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if python == sys.executable:
        env["PYTHONPATH"] = str(ROOT)  # this checkout
    else:
        env.pop("PYTHONPATH", None)  # another virtual environment: its own install
    start = time.perf_counter()
    server = subprocess.Popen([python, "-m", "keras_odir.serve", "--model", str(model), "--port", "0"], cwd="/",
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = server.stdout.readline()
        if " on http://" not in line:
            raise RuntimeError(f"{python} -m keras_odir.serve did not start: {line}{server.stdout.read()}")
        url = line.split(" on ", 1)[1].split(" ", 1)[0]
        status, _, answer = post_photos(url, *photos)
        elapsed = time.perf_counter() - start
        if status != 200:
            raise RuntimeError(f"POST /v1/predict answered {status}: {answer}")
        return elapsed
    finally:
        server.terminate()
        server.wait(timeout=60)


def _row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 448])
    parser.add_argument("--serve-python", default=sys.executable,
                        help="interpreter of a virtual environment with .[serve] only, for the .onnx start-up")
    parser.add_argument("--startup", action=argparse.BooleanOptionalAction, default=True,
                        help="also time serve's start to first prediction (--no-startup: the latencies only)")
    args = parser.parse_args()
    photos = reference_photos()
    import torch

    print(f"torch threads {torch.get_num_threads()}, CPU cores {os.cpu_count()}, {args.rounds} interleaved rounds")
    print(_row(["input", "path", "median ms/pair", "range ms", "ONNX / Keras"]))
    print(_row(["---"] * 5))
    startup = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            keras_model, onnx_model = make_models(Path(tmp), size)
            times = pair_latencies({"keras": keras_model, "onnx": onnx_model}, photos, args.rounds)
            medians = {name: statistics.median(t) for name, t in times.items()}
            for name, label in (("onnx", "ONNX, onnxruntime"), ("keras", "keras_odir Predictor, torch backend")):
                t = times[name]
                ratio = f"{medians['onnx'] / medians['keras']:.2f}" if name == "onnx" else ""
                print(_row([f"{size} px", label, f"{medians[name]:.1f}", f"{min(t):.1f}-{max(t):.1f}", ratio]))
            if args.startup and size == args.sizes[0]:
                startup = {
                    f"serve .onnx ({Path(args.serve_python).parent.parent.name})":
                        [first_prediction_s(args.serve_python, onnx_model, photos) for _ in range(3)],
                    f"serve .keras ({Path(sys.executable).parent.parent.name})":
                        [first_prediction_s(sys.executable, keras_model, photos) for _ in range(3)],
                }
    if not startup:
        return
    print()
    print(_row(["start to first prediction", f"median s ({args.sizes[0]} px)", "range s"]))
    print(_row(["---"] * 3))
    for name, t in startup.items():
        print(_row([name, f"{statistics.median(t):.1f}", f"{min(t):.1f}-{max(t):.1f}"]))


if __name__ == "__main__":
    main()
