"""Dual ResNet50 throughput, side by side: torch_odir vs keras_odir on the torch and jax backends.

Each configuration runs in its own process (the Keras backend is fixed per process), one after
the other on the same machine; the table gives pairs/s for a training step (forward, backward,
SGD update) and for inference, and the ratio to torch_odir (higher is faster).

    python benchmarks/model_throughput.py                 # 224 px and 64 px, batch 8
    python benchmarks/model_throughput.py --sizes 448 --batch 16 --precision bf16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = {
    "torch_odir": ("torch", False),
    "keras/torch": ("torch", False),
    "keras/torch jit": ("torch", True),
    "keras/jax": ("jax", True),
}
ROOT = Path(__file__).resolve().parents[1]


def _batch(batch: int, size: int, channels_first: bool):
    import numpy as np

    rng = np.random.default_rng(0)
    shape = (batch, 3, size, size) if channels_first else (batch, size, size, 3)
    left = rng.standard_normal(shape).astype("float32")
    right = rng.standard_normal(shape).astype("float32")
    labels = (rng.random((batch, 8)) < 0.3).astype("float32")
    return left, right, labels


def _timed(step, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    return (time.perf_counter() - start) / iters


def bench_torch(size: int, batch: int, warmup: int, iters: int, precision: str, device: str) -> dict:
    """torch_odir's DualResNet50, eager, SGD + BCEWithLogits."""
    import torch

    from torch_odir.model import DualResNet50

    left, right, labels = (torch.from_numpy(a).to(device) for a in _batch(batch, size, channels_first=True))
    model = DualResNet50("v0").to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16")
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def train():
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_fn(model(left, right).float(), labels)
        loss.backward()
        optimizer.step()
        sync()

    def infer():
        model.eval()
        with torch.no_grad(), autocast:
            model(left, right)
        sync()

    return {"train": batch / _timed(train, warmup, iters), "infer": batch / _timed(infer, warmup, iters)}


def bench_keras(size: int, batch: int, warmup: int, iters: int, precision: str, jit: bool) -> dict:
    """keras_odir's dual model through Keras' own train_on_batch / predict_on_batch."""
    import keras

    from keras_odir.model import build_dual_model

    if precision == "bf16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    left, right, labels = _batch(batch, size, channels_first=False)
    model = build_dual_model(head="v0", image_size=size)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss=keras.losses.BinaryCrossentropy(from_logits=True), jit_compile=jit)
    x = {"left": left, "right": right}
    return {"train": batch / _timed(lambda: model.train_on_batch(x, labels), warmup, iters),
            "infer": batch / _timed(lambda: model.predict_on_batch(x), warmup, iters)}


def worker(args) -> None:
    if args.config == "torch_odir":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        result = bench_torch(args.size, args.batch, args.warmup, args.iters, args.precision, device)
    else:
        result = bench_keras(args.size, args.batch, args.warmup, args.iters, args.precision, CONFIGS[args.config][1])
    print("RESULT " + json.dumps(result))


def run_config(config: str, size: int, args) -> dict | str:
    """One configuration in a fresh process; its result, or why there is none."""
    env = dict(os.environ, KERAS_BACKEND=CONFIGS[config][0], PYTHONPATH=str(ROOT))
    command = [sys.executable, __file__, "--worker", config, "--sizes", str(size), "--batch", str(args.batch),
               "--iters", str(args.iters), "--warmup", str(args.warmup), "--precision", args.precision]
    try:
        run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return f"timeout after {args.timeout}s"
    for line in run.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    error_lines = [line for line in (run.stderr or "").splitlines() if line.strip()]
    return "failed: " + (error_lines[-1][:100] if error_lines else f"exit {run.returncode}")


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 64], help="square image sizes to run")
    parser.add_argument("--batch", type=int, default=8, help="pairs (left + right images) per step")
    parser.add_argument("--iters", type=int, default=3, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation, caches)")
    parser.add_argument("--precision", choices=("float32", "bf16"), default="float32",
                        help="bf16: Keras mixed_bfloat16 policy vs torch autocast bfloat16")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS),
                        help="configurations to compare (torch_odir is the ratio's reference)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds allowed per configuration and size")
    parser.add_argument("--worker", choices=list(CONFIGS), dest="config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.config:
        args.size = args.sizes[0]
        worker(args)
        return 0
    from tqdm import tqdm

    results = {}
    jobs = [(size, config) for size in args.sizes for config in args.configs]
    for size, config in tqdm(jobs, desc="configurations", unit="run"):
        results[size, config] = run_config(config, size, args)
    print(f"\nbatch {args.batch} pairs, {args.precision}, {args.iters} timed steps after {args.warmup} warm-up; "
          "pairs/s (ratio to torch_odir)")
    print(f"{'size':>5}  {'configuration':16s} {'train step':>22s} {'inference':>22s}")
    for size in args.sizes:
        reference = results.get((size, "torch_odir"))
        for config in args.configs:
            result = results[size, config]
            if isinstance(result, str):
                print(f"{size:5d}  {config:16s} {result}")
                continue
            cells = []
            for kind in ("train", "infer"):
                ratio = f"({result[kind] / reference[kind]:.2f}x)" if isinstance(reference, dict) else ""
                cells.append(f"{result[kind]:10.2f} {ratio:>9s}")
            print(f"{size:5d}  {config:16s} {cells[0]:>22s} {cells[1]:>22s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
