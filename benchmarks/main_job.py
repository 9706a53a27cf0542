"""The main job (``python -m keras_odir.train`` with no config: the demo) at two revisions, back to back.

Each round runs the job once per checkout, alternating (A, B, A, B, ...), so a busy machine slows
both alike; the same demo set (``data/synthetic/`` of this checkout) is used by both. Printed: the
wall time of each run, and the median ratio (revision's time / this checkout's time, > 1: this
checkout is faster) with its range.

    python benchmarks/main_job.py --revision e82ec21 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def checkout(revision: str, where: Path) -> Path:
    """A detached worktree of ``revision`` at ``where``, sharing this checkout's demo data."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(where), revision],
                   check=True, capture_output=True)
    (where / "data").mkdir(exist_ok=True)
    (where / "data" / "synthetic").symlink_to(ROOT / "data" / "synthetic")
    found = subprocess.run([sys.executable, "-c", "import keras_odir; print(keras_odir.__file__)"], cwd=where,
                           env={**os.environ, "KERAS_BACKEND": "torch", "PYTHONPATH": str(where)},
                           capture_output=True, text=True, check=True).stdout.strip()
    if not Path(found).is_relative_to(where):
        raise SystemExit(f"{revision}: imports keras_odir from {found}, not from its checkout")
    return where


def run_job(repo: Path, run_dir: Path, extra: list[str]) -> float:
    """Seconds of one main job in ``repo`` (its own package, this interpreter)."""
    env = {**os.environ, "KERAS_BACKEND": "torch", "PYTHONPATH": str(repo)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "keras_odir.train", "--run-dir", str(run_dir), *extra],
                          cwd=repo, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{repo}: the main job failed:\n{proc.stderr[-2000:]}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--revision", required=True, help="the git revision to compare this checkout with")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("extra", nargs="*", help="flags passed to both jobs (after --)")
    args = parser.parse_args(argv)

    from odir_core.data.synthetic import demo_dataset

    demo_dataset(patients=300)  # generated once, before any timing
    times: dict[str, list[float]] = {args.revision: [], "this checkout": []}
    with tempfile.TemporaryDirectory() as tmp:
        old = checkout(args.revision, Path(tmp) / "old")
        try:
            load = os.getloadavg()[0]
            for r in range(args.rounds):
                for name, repo in ((args.revision, old), ("this checkout", ROOT)):
                    times[name].append(run_job(repo, Path(tmp) / f"runs-{r}", args.extra))
                    print(f"round {r + 1}: {name}: {times[name][-1]:.1f} s", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], capture_output=True)
    ratios = [a / b for a, b in zip(times[args.revision], times["this checkout"], strict=True)]
    print(f"load {load:.1f} before / {os.getloadavg()[0]:.1f} after")
    for name, values in times.items():
        print(f"{name:<16} median {statistics.median(values):.1f} s  [{min(values):.1f}, {max(values):.1f}]")
    print(f"speed-up {statistics.median(ratios):.2f}x [{min(ratios):.2f}, {max(ratios):.2f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
