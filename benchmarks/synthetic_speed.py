"""Speed of the synthetic generator: 1000 prepared patients at 128 px, one worker vs several, side by side.

    .venv/bin/python benchmarks/synthetic_speed.py [--patients 1000] [--size 128] [--workers 2]

Prints wall time per configuration, images per second and the speed-up ratio, plus the
cost of one raw (camera-size) image for comparison. Goal: under 30 s for 1000 patients on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

from odir_core.data import synthetic


def cpu_seconds() -> float:
    """CPU time of this process and its finished worker processes."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of fn()."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    fn()
    return time.perf_counter() - wall, cpu_seconds() - cpu


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--patients", type=int, default=1000, help="patients per timed run")
    p.add_argument("--size", type=int, default=128, help="prepared image size in px")
    p.add_argument("--workers", type=int, default=2, help="worker processes of the parallel run")
    p.add_argument("--raw-patients", type=int, default=5, help="patients of the raw (2400 px) timing")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for workers in (1, args.workers):
            out = Path(tmp) / f"w{workers}"
            runs[workers], cpu = timed(lambda: synthetic.generate(out, args.patients, args.size, seed=0,
                                                                   workers=workers))
            print(f"prepared {args.size}px, {args.patients} patients, {workers} worker(s): {runs[workers]:.1f} s wall "
                  f"({2 * args.patients / runs[workers]:.0f} images/s), {cpu:.1f} CPU s "
                  f"({1000 * cpu / (2 * args.patients):.1f} ms CPU per image)")
        print(f"speed-up {args.workers} workers / 1 worker: {runs[1] / runs[args.workers]:.2f}x "
              f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: wall times shrink on an idle machine)")
        raw, _ = timed(lambda: synthetic.generate(Path(tmp) / "raw", args.raw_patients, seed=0,
                                               layout="grand-challenge", workers=1))
        per_raw = raw / (2 * args.raw_patients)
        per_prep = runs[1] / (2 * args.patients)
        print(f"raw grand-challenge frames (1000-2400 px), 1 worker: {per_raw * 1000:.0f} ms/image "
              f"= {per_raw / per_prep:.0f}x a prepared {args.size}px image")


if __name__ == "__main__":
    main()
