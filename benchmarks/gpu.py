"""The GPU report in one run: model throughput and a real training epoch of each trainer.

    bash benchmarks/gpu.sh                          # on a CUDA machine: launch-bound (32 px, 2 pairs), 224 and 448 px
    bash benchmarks/gpu.sh --device cpu --quick     # the same steps, small (ResNet18), on any machine

Writes ``gpu.json`` (every number) and ``gpu.md`` (the tables) into ``--out``. Throughput comes
from ``model_throughput.py`` (torch_odir against keras_odir on the torch and jax backends,
interleaved rounds); the training epoch is ``python -m torch_odir.train`` and
``python -m keras_odir.train`` on the synthetic set, timed from the epoch lines they log.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import model_throughput  # noqa: E402


def _backbone(args) -> str:
    """The study's ResNet50; ResNet18 for --quick, whose job is to show that every step runs."""
    return "resnet18" if args.quick else "resnet50"


def throughput(args) -> tuple[dict, list[str]]:
    """Every regime, size and precision: the per-round times and the printed tables. The launch-bound regime
    (``model_throughput.REGIMES["launch"]``: 32 px, 2 pairs, 1 thread) comes first: the framework's own cost
    per layer, which a GPU exposes at every size; then 224 and 448 px at batch 32; then the launch-bound regime
    compiled (``--compile``: torch_odir and keras_odir's executor under ``torch.compile``)."""
    raw, tables = {}, []
    launch = model_throughput.REGIMES["launch"]
    if args.quick:
        passes = [("quick", [32], 2, os.cpu_count(), False)]
    else:  # compiled against compiled where compilation pays most: the launch-bound regime
        passes = [("launch", *launch, False), ("large", [224, 448], 32, os.cpu_count(), False),
                  ("launch compiled", *launch, True)]
    for regime, sizes, batch, threads, compiled in passes:
        for precision in ("float32",) if compiled else ("float32", "bf16"):
            bench = argparse.Namespace(
                batch=batch, rounds=1 if args.quick else 7, iters=1 if args.quick else 3,
                warmup=1 if args.quick else 3, threads=threads, precision=precision, device=args.device,
                backbone=_backbone(args), timeout=args.timeout, compile=compiled)
            results = {}
            for size in sizes:
                for backend in ("torch",) if compiled else model_throughput.DEFAULT_BACKENDS:
                    results[size, backend] = model_throughput.run_backend(backend, size, bench)
                    raw[f"{regime} {precision} {size} {backend}"] = results[size, backend]
            tables.append(model_throughput.table(results, bench))
    return raw, tables


def training_epoch(package: str, args, data: Path, run_dir: Path) -> dict:
    """One epoch of ``package``'s trainer on the synthetic set: wall time and its exit code."""
    size = 32 if args.quick else 224
    command = [sys.executable, "-m", f"{package}.train", "--data", str(data), "--run-dir", str(run_dir),
               "--experiment", package, "--epochs", "1", "--image-size", str(size), "--batch-size",
               "4" if args.quick else "32", "--weights", "none", "--fine-tune", "--augment", "dual",
               "--workers", "0" if args.quick else "4", "--backbone", _backbone(args)]
    if package == "torch_odir":
        command += ["--device", args.device]
    env = dict(os.environ, PYTHONPATH=str(ROOT), KERAS_BACKEND="torch")
    start = time.perf_counter()
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout)
    seconds = time.perf_counter() - start
    done = re.search(r"Done in ([\d.]+) (s|min)\b", run.stdout + run.stderr)
    training_s = float(done.group(1)) * (60 if done.group(2) == "min" else 1) if done else None
    return {"exit": run.returncode, "wall_s": round(seconds, 1),
            "training_s": None if training_s is None else round(training_s, 1),
            "tail": (run.stdout + run.stderr).strip().splitlines()[-3:]}


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="torch device for torch_odir (Keras picks its own)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, ResNet18 and one round: a check that it all runs")
    parser.add_argument("--out", type=Path, default=Path("gpu-report"), help="folder for gpu.json and gpu.md")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds allowed per subprocess")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    raw, tables = throughput(args)

    from odir_core.data.synthetic import generate

    data = args.out / "synthetic"
    if not data.exists():
        generate(data, patients=16 if args.quick else 400, size=48 if args.quick else 256, seed=0)
    epochs = {package: training_epoch(package, args, data, args.out / "runs") for package in ("torch_odir", "keras_odir")}
    report = {"device": args.device, "quick": args.quick, "throughput": raw, "training_epoch": epochs}
    (args.out / "gpu.json").write_text(json.dumps(report, indent=1))
    lines = ["# keras-odir throughput", "", *[t + "\n" for t in tables], "## One training epoch (synthetic set)", "",
             "| trainer | exit | wall s | training s |", "|---|---|---|---|"]
    lines += [f"| {p} | {e['exit']} | {e['wall_s']} | {e['training_s']} |" for p, e in epochs.items()]
    (args.out / "gpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    failed = [p for p, e in epochs.items() if e["exit"] != 0]
    failed += [k for k, v in raw.items() if isinstance(v, str)]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
