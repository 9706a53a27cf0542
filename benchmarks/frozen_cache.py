"""Frozen backbone, no augmentation: training the head on cached backbone features vs running the
whole dual model every step, side by side in one process (keras_odir.train, 20 epochs).

    KERAS_BACKEND=torch python benchmarks/frozen_cache.py [--patients 40] [--size 64] [--epochs 20]

Prints the wall time of each run (data set-up, feature extraction and per-epoch evaluation
included) and the speed-up, and checks that both end with the same head weights.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_odir.train import train  # noqa: E402
from odir_core.data.synthetic import generate  # noqa: E402
from odir_core.training.config import TrainConfig  # noqa: E402


def _head(run: Path) -> list[np.ndarray]:
    model = keras.saving.load_model(run / "last.keras", compile=False)
    return [w for layer in model.layers if layer.name.startswith("head_") for w in layer.get_weights()]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=40, help="synthetic patients (80%% train, 20%% val)")
    parser.add_argument("--size", type=int, default=64, help="image size in pixels")
    parser.add_argument("--epochs", type=int, default=20, help="epochs of each run")
    parser.add_argument("--batch-size", type=int, default=16, help="patients per batch")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = generate(tmp / "data", patients=args.patients, size=args.size, seed=0)
        base = TrainConfig(data=str(data), image_size=args.size, batch_size=args.batch_size, weights="none",
                           epochs=args.epochs, patience=0, lr=1e-4, experiment="bench", weighted_loss=False)
        times, runs = {}, {}
        for name, cache in (("cached features", True), ("full model", False)):
            start = time.perf_counter()
            runs[name] = train(base.replace(feature_cache=cache, run_dir=str(tmp / name.replace(" ", "_"))),
                               log=lambda *_: None)
            times[name] = time.perf_counter() - start
        diff = max(float(np.abs(a - b).max()) for a, b in zip(_head(runs["cached features"]), _head(runs["full model"])))

    print(f"{args.epochs} epochs, {args.patients} patients, {args.size} px, backend {keras.backend.backend()}")
    for name, seconds in times.items():
        print(f"  {name:16s} {seconds:8.1f} s")
    print(f"  speed-up of the feature cache: {times['full model'] / times['cached features']:.1f}x")
    print(f"  max |head weight difference|: {diff:.2e}")


if __name__ == "__main__":
    main()
