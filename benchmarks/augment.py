"""Augmented pairs per second, dual mode 512 -> 448, on one core and on all cores.

    .venv/bin/python benchmarks/augment.py [--pairs 200] [--workers N]

odir_core.data.augment.augment_pair (OpenCV) on synthetic prepared 512 px pairs,
with and without ImageNet normalisation to float32, on one core (one process,
OpenCV single-threaded) and on all cores (one process per core), next to the
study's path on one core: the same recipe with torchvision.transforms.functional
on PIL images (rotate, crop, flip, brightness/contrast/saturation/hue, to_tensor,
normalize), when torchvision is installed. Prints pairs/s and ratios.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time

import cv2
import numpy as np

from odir_core.data.augment import augment_pair, normalize
from odir_core.data.synthetic import render_patient

SPAWN = multiprocessing.get_context("spawn")  # forked children can hang on inherited OpenCV locks
CROP = 448
_PAIRS: list = []


def make_pairs(n: int, size: int = 512) -> list[tuple[np.ndarray, np.ndarray]]:
    return [render_patient(0, pid, size, raw=False) for pid in range(n)]


def run_ours(pairs, count: int, seed: int, with_normalize: bool) -> int:
    rng = np.random.default_rng(seed)
    for k in range(count):
        left, right = augment_pair(*pairs[k % len(pairs)], rng, "dual", crop_size=CROP)
        if with_normalize:
            normalize(left), normalize(right)
    return count


def _init(pairs):
    cv2.setNumThreads(1)
    _PAIRS[:] = pairs


def _work(args):
    count, seed = args
    return run_ours(_PAIRS, count, seed, True)


def pool_rate(workers: int, pairs, total: int) -> float:
    """Pairs/s of ``workers`` single-threaded processes sharing ``total`` pairs (start-up excluded)."""
    per_worker = max(1, total // workers)
    with SPAWN.Pool(workers, _init, (pairs,)) as pool:
        pool.map(_work, [(2, s) for s in range(workers)], chunksize=1)  # warm-up
        start = time.perf_counter()
        done = sum(pool.map(_work, [(per_worker, 100 + s) for s in range(workers)], chunksize=1))
        return done / (time.perf_counter() - start)


def run_torchvision_pil(pairs, count: int, seed: int) -> int:
    """The study's per-sample path: torchvision functionals on PIL images, then tensors, normalised."""
    import torchvision.transforms.functional as F
    from PIL import Image

    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    rng = np.random.default_rng(seed)
    pil = [(Image.fromarray(a), Image.fromarray(b)) for a, b in pairs]
    for k in range(count):
        left, right = pil[k % len(pil)]
        out = []
        for img in (left, right):
            img = F.rotate(img, int(rng.integers(-30, 31)))
            top, lft = int(rng.integers(0, 512 - CROP + 1)), int(rng.integers(0, 512 - CROP + 1))
            out.append(F.crop(img, top, lft, CROP, CROP))
        left, right = out
        if rng.random() < 0.5:
            left, right = F.hflip(right), F.hflip(left)
        if rng.random() < 0.5:
            left, right = F.vflip(left), F.vflip(right)
        b, c, s, h = rng.uniform(0.8, 1.2, 3).tolist() + [rng.uniform(-0.1, 0.1)]
        for img in (left, right):
            img = F.adjust_hue(F.adjust_saturation(F.adjust_contrast(F.adjust_brightness(img, b), c), s), h)
            F.normalize(F.to_tensor(img), mean, std)
    return count


def rate(fn, *args) -> float:
    start = time.perf_counter()
    n = fn(*args)
    return n / (time.perf_counter() - start)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--pairs", type=int, default=200, help="augmented pairs per timing")
    p.add_argument("--distinct", type=int, default=8, help="distinct synthetic patients cycled through")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes for the all-cores run")
    args = p.parse_args(argv)

    pairs = make_pairs(args.distinct)
    cv2.setNumThreads(1)
    run_ours(pairs, 5, 0, True)  # warm-up
    one = rate(run_ours, pairs, args.pairs, 1, False)
    one_norm = rate(run_ours, pairs, args.pairs, 2, True)
    print(f"dual 512 -> {CROP}, one core: {one:7.1f} pairs/s augment, {one_norm:7.1f} pairs/s augment + normalize")

    single = pool_rate(1, pairs, args.pairs)
    many = pool_rate(args.workers, pairs, args.pairs)
    print(f"dual 512 -> {CROP}, worker processes, augment + normalize: 1 core {single:7.1f} pairs/s, "
          f"{args.workers} cores {many:7.1f} pairs/s ({many / single:.2f}x)")

    try:
        import torchvision  # noqa: F401
    except ImportError:
        print("torchvision not installed: study-path comparison skipped")
        return
    import torch

    torch.set_num_threads(1)
    count = max(10, args.pairs // 4)
    study = rate(run_torchvision_pil, pairs, count, 3)
    print(f"study path (torchvision on PIL), one core: {study:7.1f} pairs/s augment + normalize; "
          f"odir_core is {one_norm / study:.2f}x faster")


if __name__ == "__main__":
    main()
