"""Image loading from a built odir5k TFDS dataset vs the prepared folder of the same images.

Makes one synthetic grand-challenge source, prepares it (``odir_core.data.prepare``) and builds it
(``odir_core.data.tfds``) at the same size, then times decoding every training image once, uncached,
through ``DualEyeDataset`` from each, side by side in this process, and prints the ratio.
Run: ``python benchmarks/tfds_read.py [--patients 200] [--size 224] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from odir_core.data.annotations import read_annotations
from odir_core.data.dataset import DualEyeDataset
from odir_core.data.prepare import main as prepare_main
from odir_core.data.splits import split_frames
from odir_core.data.synthetic import generate
from odir_core.data.tfds import source as tfds_source
from odir_core.data.tfds.cli import main as tfds_main


def epoch_seconds(dataset: DualEyeDataset) -> float:
    """Seconds to load both eyes of every patient once."""
    start = time.perf_counter()
    for i in range(len(dataset)):
        dataset.image(i, 0)
        dataset.image(i, 1)
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=200, help="synthetic patients")
    parser.add_argument("--size", type=int, default=224, help="prepared / built image size in pixels")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per source (best is kept)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = generate(tmp / "src", args.patients, size=max(args.size * 2, 256), seed=0, layout="grand-challenge")
        folder = tmp / "prepared"
        prepare_main(["--source", str(src), "--out", str(folder), "--size", str(args.size)])
        tfds_main(["build", "--source", str(src), "--variant", f"prepared_{args.size}",
                   "--data-dir", str(tmp / "tfds")])
        built = tmp / "tfds" / "odir5k" / f"prepared_{args.size}" / "1.0.0"
        start = time.perf_counter()
        train_tfds, _ = tfds_source.split_frames(built)
        rows_seconds = time.perf_counter() - start
        train_folder, _ = split_frames(read_annotations(folder / "annotations.xlsx"), "study")
        options = dict(image_size=args.size, train=False, cache=False)
        datasets = {"folder": DualEyeDataset(folder, train_folder, **options),
                    "tfds": DualEyeDataset(built, train_tfds, **options)}
        best = {name: min(epoch_seconds(ds) for _ in range(args.repeats)) for name, ds in datasets.items()}
    n = 2 * len(train_folder)
    print(f"{len(train_folder)} training patients, {args.size} px PNG, best of {args.repeats}:")
    for name, seconds in best.items():
        print(f"  {name:6s} {seconds:7.3f} s  ({n / seconds:8.1f} images/s)")
    print(f"  tfds / folder time ratio: {best['tfds'] / best['folder']:.2f}")
    print(f"  reading the tfds rows (annotation table) once: {rows_seconds:.3f} s")


if __name__ == "__main__":
    main()
