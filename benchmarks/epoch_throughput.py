"""A real training epoch of ``fit`` against the model-only step rate (keras_odir on the torch backend).

Every round runs a two-epoch ``fit`` of each configuration and times its second epoch on the same synthetic prepared set (images
decoded from JPEG, dual augmentation, crop), interleaved (A, B, C, A, B, C, ...) so that a busy
machine slows them alike:

- ``model only``: ``fit`` over the same batches decoded and augmented beforehand (in memory);
- ``fit, N workers``: ``fit`` over ``keras_odir.data.image_batches`` as ``keras_odir.train`` runs
  it, decoding and augmenting in N worker processes (0: in the main process).

Each is compiled as the trainer compiles (TorchSGD, BCE, the epoch-outputs metric).
Printed: pairs/s per configuration (median over rounds) and the median ratio to ``model only``
with its range; >= 0.9 means the input pipeline keeps up.

    python benchmarks/epoch_throughput.py                       # 224 px, 48 training pairs, batch 8
    python benchmarks/epoch_throughput.py --size 64 --pairs 96 --workers 0 2 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras
import numpy as np

import keras_odir  # noqa: F401
from keras_odir.data import EpochBatches, image_batches
from keras_odir.epoch_outputs import EpochOutputs
from keras_odir.losses import WeightedBCEWithLogits
from keras_odir.model import build_dual_model
from keras_odir.optimizers import TorchSGD
from odir_core.data.annotations import read_annotations
from odir_core.data.dataset import DualEyeDataset
from odir_core.data.synthetic import generate

MODEL_ONLY = "model only"


def in_memory(batches: EpochBatches) -> EpochBatches:
    """The same epochs' batches, decoded and augmented now and served from memory."""
    built = [batches[i] for i in range(len(batches))]
    steps = batches.steps_per_epoch
    return EpochBatches(lambda indices, epoch, start: built[epoch * steps + start // batches.batch_size],
                        batches.labels, batches.batch_size, seed=batches.seed, shuffle=batches.shuffle,
                        epochs=batches.epochs)


class EpochTimes(keras.callbacks.Callback):
    """Wall time of each epoch."""

    def on_train_begin(self, logs=None):
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)


def second_epoch(model: keras.Model, batches: EpochBatches) -> float:
    """Seconds of the second epoch of a two-epoch ``fit``: as in a run, its batches are prefetched
    while the first epoch ends, and worker start-up is out of it."""
    times = EpochTimes()
    model.fit(batches, epochs=2, steps_per_epoch=batches.steps_per_epoch, shuffle=False, verbose=0,
              callbacks=[times])
    return times.seconds[1]


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224, help="network input side (crop of a 1.15x image)")
    parser.add_argument("--pairs", type=int, default=48, help="training pairs in the epoch")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="worker counts of the fit runs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    parser.add_argument("--data", type=Path, help="a prepared set to read (default: a fresh synthetic one)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or generate(Path(tmp) / "set", patients=args.pairs, size=512, seed=0)
        df = read_annotations(data / "annotations.xlsx")
        image_size = round(args.size * 1.15)
        dataset = DualEyeDataset(data, df, image_size=image_size, crop_size=args.size, augment="dual", train=True)
        model = build_dual_model("resnet50", "v0", freeze_backbone=False, image_size=args.size)
        steps = -(-len(df) // args.batch)
        model.compile(optimizer=TorchSGD(learning_rate=1e-4, momentum=0.9),
                      loss=WeightedBCEWithLogits(None),
                      metrics=[EpochOutputs(steps * args.batch)])

        def pipeline(workers):  # a fresh one per fit, as each run has its own
            return image_batches(dataset, args.batch, seed=0, shuffle=True, epochs=2, workers=workers)

        memory = in_memory(pipeline(0))
        configs = {MODEL_ONLY: lambda: memory, **{f"fit, {w} workers": partial(pipeline, w) for w in args.workers}}
        second_epoch(model, memory)  # warm-up: first-call costs out of the rounds
        seconds = {name: [] for name in configs}
        load = os.getloadavg()[0]
        for _ in range(args.rounds):
            for name, batches in configs.items():
                seconds[name].append(second_epoch(model, batches()))

    print(f"{len(df)} pairs/epoch at {args.size} px, batch {args.batch}, {args.threads} threads, "
          f"{args.rounds} rounds, load {load:.1f} before / {os.getloadavg()[0]:.1f} after")
    print(f"{'configuration':<22} {'pairs/s':>8}  ratio to model only (median [min, max])")
    base = np.array(seconds[MODEL_ONLY])
    for name, times in seconds.items():
        ratios = base / np.array(times)
        print(f"{name:<22} {len(df) / statistics.median(times):8.2f}  "
              f"{statistics.median(ratios):.2f} [{ratios.min():.2f}, {ratios.max():.2f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
