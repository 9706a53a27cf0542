"""Where a step's time goes: the torch kernels against the Python that launches them, torch_odir beside keras_odir.

The steps of ``model_throughput.py`` (training step and inference of torch_odir in channels_last, of keras_odir's
executor and of its folded executor) in the launch-bound regime by default (32 px, 2 pairs, 1 thread), each
timed in interleaved rounds and then run under ``torch.profiler``: per step, the wall time, the number of torch
operators called, the time inside them (the profiler's self CPU time of every operator) and the rest (Python:
the framework's own work between kernels, and the profiler's overhead, alike for both). Then the Python
functions of keras_odir's training step that take the most time of their own (``cProfile``).

    python benchmarks/step_profile.py --backbone resnet50 --rounds 5
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_throughput import keras_steps, torch_steps  # noqa: E402


def _steps(args) -> dict[str, object]:
    torch_train, torch_infer = torch_steps(args.batch, args.size, args.precision, "cpu", args.backbone, True)
    keras_train, keras_infer = keras_steps(args.batch, args.size, args.precision, args.backbone, executor=True)
    _, folded_infer = keras_steps(args.batch, args.size, args.precision, args.backbone, folded=True, executor=True)
    return {"torch_odir train": torch_train, "keras executor train": keras_train,
            "torch_odir inference": torch_infer, "keras executor inference": keras_infer,
            "keras folded executor inference": folded_infer}


def _profile(step, iters: int) -> tuple[float, float]:
    """(torch operators per step, ms per step inside them) under torch.profiler."""
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(iters):
            step()
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    return sum(e.count for e in events) / iters, sum(e.self_cpu_time_total for e in events) / 1000 / iters


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", choices=("float32", "bf16"), default="float32")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=4)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    steps = _steps(args)
    for step in steps.values():
        step(), step()  # warm-up
    times = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(args.iters):
                step()
            times[name].append((time.perf_counter() - start) / args.iters * 1000)
    print(f"{args.backbone}, {args.size} px, {args.batch} pairs, {args.threads} thread(s), {args.precision}; "
          f"ms per step (median of {args.rounds} interleaved rounds) and, under torch.profiler, per step:")
    print("| step | wall ms | torch operators | ms in operators | ms outside |")
    print("|---|---|---|---|---|")
    for name, step in steps.items():
        count, inside = _profile(step, args.iters)
        wall = statistics.median(times[name])
        print(f"| {name} | {wall:.1f} | {count:.0f} | {inside:.1f} | {wall - inside:.1f} |")
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(args.iters):
        steps["keras executor train"]()
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
    print(f"\nkeras executor train, {args.iters} steps: the functions with the most time of their own")
    print(text.getvalue())


if __name__ == "__main__":
    main()
