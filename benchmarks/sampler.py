"""Epoch time of MultilabelBalancedSampler vs a per-draw implementation and plain shuffling.

The per-draw reference follows the study's sampler step by step (class picked with
``np.random.choice`` on every draw, labels counted with a Python loop over the row), which is how
the original behaves. Run: ``python benchmarks/sampler.py [--annotations FILE] [--epochs N]``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from odir_core.data.sampler import MultilabelBalancedSampler
from odir_core.labels import LABELS

# the study's reference folder: $ODIR_REFERENCE, else ../shared/reference beside the repository (as the tests)
REFERENCE = Path(os.environ.get("ODIR_REFERENCE") or Path(__file__).resolve().parents[2] / "shared" / "reference")
DEFAULT_ANNOTATIONS = REFERENCE / "odir5k_annotations.xlsx"


def per_draw_epoch(labels: np.ndarray, class_members: list[np.ndarray], counts: np.ndarray, rng) -> list[int]:
    """One least_sampled epoch drawn the straightforward way: one numpy call per decision."""
    out = []
    for _ in range(len(labels)):
        low = counts.min()
        cls = rng.choice(np.flatnonzero(counts == low))
        row = int(rng.choice(class_members[cls]))
        for c, flag in enumerate(labels[row]):
            if flag:
                counts[c] += 1
        out.append(row)
    return out


def _labels(path: Path | None, rng) -> tuple[np.ndarray, str]:
    if path is not None and path.is_file():
        import pandas as pd

        return pd.read_excel(path)[list(LABELS)].to_numpy(), str(path)
    # ODIR-5K-sized stand-in with the real label frequencies (N D G C A H M O out of 3500)
    freq = np.array([1140, 1128, 215, 212, 164, 103, 174, 979]) / 3500
    y = (rng.random((3490, 8)) < freq).astype(int)
    y[y.sum(axis=1) == 0, 0] = 1
    return y, "random labels with ODIR-5K frequencies (annotations file not found)"


def _time(fn, epochs: int) -> float:
    start = time.perf_counter()
    for _ in range(epochs):
        fn()
    return (time.perf_counter() - start) / epochs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotations", type=Path, default=DEFAULT_ANNOTATIONS, help="ODIR-5K annotations xlsx (label columns N..O)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs timed per method (default 5)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    labels, source = _labels(args.annotations, rng)
    print(f"{len(labels)} patients from {source}; mean over {args.epochs} epochs")

    members = [np.flatnonzero(labels[:, c]) for c in range(labels.shape[1])]
    counts = np.zeros(labels.shape[1], dtype=np.int64)
    results = {
        "per-draw least_sampled": _time(lambda: per_draw_epoch(labels, members, counts, rng), args.epochs),
    }
    for mode in ("least_sampled", "random", "cycle"):
        sampler = MultilabelBalancedSampler(labels, class_choice=mode, seed=0)
        results[f"MultilabelBalancedSampler {mode}"] = _time(sampler.epoch, args.epochs)
    results["rng.permutation (no balancing)"] = _time(lambda: rng.permutation(len(labels)), args.epochs)

    reference = results["per-draw least_sampled"]
    for name, seconds in results.items():
        print(f"{name:>40}: {seconds * 1e3:9.2f} ms/epoch   speed-up vs per-draw x{reference / seconds:8.1f}")


if __name__ == "__main__":
    main()
