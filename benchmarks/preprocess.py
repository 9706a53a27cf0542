"""Speed of preparing raw photographs to 512 px: odir_core.data.preprocess.prepare_image vs the straightforward path.

    .venv/bin/python benchmarks/preprocess.py [--images 200] [--size 512] [--workers N]

Photographs: raw camera frames from the synthetic generator (rendered at about
1000 px, since rendering at camera size takes seconds per image), rescaled to
2000-2400 px wide with sensor-like noise, randomly mirrored, saved as JPEG q95.
Both paths run over the same worker pool in one process and produce uint8
size x size RGB:

- straightforward: PIL full-resolution decode -> FOV, circle, FOV crop -> resize
- prepare_image: OpenCV reduced-size JPEG decode (1/2, 1/4, 1/8) -> same chain

Prints images/s for each, the ratio, and the mean absolute difference of the
outputs (grey levels), then images/s of the whole `prepare` CLI (decode, chain,
PNG write, annotations) on a grand-challenge folder of the same photographs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from odir_core.data.imageio import encode_image
from odir_core.data.layouts import GRAND_CHALLENGE
from odir_core.data.preprocess import prepare_image, preprocess_fundus
from odir_core.data.synthetic import render_patient, sample_annotations
from odir_core.spreadsheets import write_xlsx

SPAWN = multiprocessing.get_context("spawn")  # forked children can hang on inherited OpenCV locks


def _render(args):
    seed, pid, width = args
    cv2.setNumThreads(1)
    return render_patient(seed, pid, width, raw=True)


def make_photographs(folder: Path, images: int, unique: int, workers: int, seed: int = 0) -> list[Path]:
    """Write ``images`` raw-like JPEGs 2000-2400 px wide to ``folder`` as <ID>_left/right.jpg."""
    with SPAWN.Pool(workers) as pool:
        frames = [f for pair in pool.map(_render, [(seed, pid, 1000) for pid in range(unique)]) for f in pair]
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(images):
        frame = frames[k % len(frames)]
        width = int(rng.uniform(2000, 2400))
        height = int(round(frame.shape[0] * width / frame.shape[1]))
        big = cv2.resize(frame, (width, height), interpolation=cv2.INTER_CUBIC)
        noise = rng.normal(0, 2.0, big.shape[:2]).astype(np.float32)[:, :, None]
        big = np.clip(big + noise * (big.max(axis=2, keepdims=True) > 10), 0, 255).astype(np.uint8)
        if rng.random() < 0.5:
            big = big[:, ::-1]
        path = folder / f"{k // 2}_{'left' if k % 2 == 0 else 'right'}.jpg"
        path.write_bytes(encode_image(np.ascontiguousarray(big), "jpg", 95))
        paths.append(path)
    return paths


_SIZE = 512


def _init(size):
    global _SIZE
    _SIZE = size
    cv2.setNumThreads(1)


def straightforward(path: str) -> np.ndarray:
    """PIL full-resolution decode, then the same chain."""
    img = np.asarray(Image.open(path).convert("RGB"))
    return preprocess_fundus(img, _SIZE)


def fast(path: str) -> np.ndarray:
    """odir_core's path: reduced JPEG decode when the size allows, then the chain."""
    return prepare_image(path, _SIZE)


def timed_map(pool, fn, paths):
    start = time.perf_counter()
    out = pool.map(fn, paths, chunksize=4)
    return out, time.perf_counter() - start


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--images", type=int, default=200, help="raw photographs to prepare")
    p.add_argument("--unique", type=int, default=20, help="distinct synthetic patients rendered (reused, rescaled)")
    p.add_argument("--size", type=int, default=512, help="output side in px")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes for both paths")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "source"  # prepare's --out must lie outside its --source
        folder = source / GRAND_CHALLENGE.images
        folder.mkdir(parents=True)
        paths = make_photographs(folder, args.images, args.unique, args.workers)
        sizes = [Image.open(q).size for q in paths]
        mb = sum(q.stat().st_size for q in paths) / 1e6
        print(f"{len(paths)} JPEGs, widths {min(s[0] for s in sizes)}-{max(s[0] for s in sizes)} px, {mb:.0f} MB; "
              f"{args.workers} worker(s), output {args.size} px")
        names = [str(q) for q in paths]
        with SPAWN.Pool(args.workers, _init, (args.size,)) as pool:
            pool.map(fast, names[: args.workers])  # warm the workers
            slow_out, slow_s = timed_map(pool, straightforward, names)
            fast_out, fast_s = timed_map(pool, fast, names)
        mae = [np.abs(a.astype(np.int16) - b).mean() for a, b in zip(fast_out, slow_out)]
        print(f"straightforward (PIL full decode + chain): {len(names) / slow_s:7.1f} images/s")
        print(f"prepare_image (reduced decode + chain):    {len(names) / fast_s:7.1f} images/s")
        print(f"speed-up: {slow_s / fast_s:.2f}x; output difference: mean MAE {np.mean(mae):.2f}, "
              f"max {np.max(mae):.2f} grey levels")

        n_patients = len(paths) // 2
        write_xlsx(sample_annotations(n_patients), source / GRAND_CHALLENGE.annotations, index=False)
        from odir_core.data.prepare import main as prepare_main

        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            status = prepare_main(["--source", str(source), "--out", str(Path(tmp) / "out"), "--size", str(args.size),
                                   "--workers", str(args.workers)])
        cli_s = time.perf_counter() - start
        print(f"prepare CLI end to end (PNG out, exit {status}): {2 * n_patients / cli_s:7.1f} images/s")


if __name__ == "__main__":
    main()
