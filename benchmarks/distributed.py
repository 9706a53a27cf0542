"""Data-parallel throughput of torch_odir.train: 1 process against N processes under torchrun, same global batch.

Each round launches torchrun once with 1 process and once with N (interleaved A, B, A, B, ... so that a busy
machine slows them alike). Every launch builds the run as ``torch_odir.train`` does (its datasets, DDP, the
split of each global batch, the per-batch loss all-reduce) and times whole training epochs after a warm-up
epoch, and the all-reduce of a ResNet-50-sized gradient (25.6 M float32 values, 102 MB) on its process group.
Printed per launch kind: patients/s (median over rounds); then the median ratio N/1 with its range, and the
all-reduce time, which with the step time gives the scaling estimate in the README.

    python benchmarks/distributed.py                    # CPU: gloo, 2 processes, ResNet-18 at 64 px
    python benchmarks/distributed.py --gpu              # every GPU of the machine: NCCL, ResNet-50 at 224 px
    python benchmarks/distributed.py --processes 4 --rounds 5 --patients 400
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESNET50_VALUES = 25_557_032  # torchvision resnet50 parameters: the gradient one all-reduce carries


def worker(args) -> None:
    """One process of a launch: train ``args.epochs`` epochs after a warm-up one, print rank 0's timings."""
    import torch
    import torch.distributed as dist

    from odir_core.training.ranks import Ranks
    import torch_odir.train as ttrain
    from torch_odir.devices import resolve_device
    from odir_core.training.collectives import from_main, process_group
    from odir_core.training.config import TrainConfig
    from odir_core.training.run import setup_run

    ranks = Ranks.from_env()
    device = resolve_device(args.device, ranks)
    config = TrainConfig(data=args.data, run_dir=args.runs, experiment="bench", backbone=args.backbone, head="v0",
                         fine_tune=True, weights="none", image_size=args.size, batch_size=args.batch,
                         epochs=args.epochs + 1, device=args.device, workers=args.workers, lr=0.001)
    quiet = ranks.log(lambda *_: None)
    with process_group(ranks, str(device), dist, torch.cuda.set_device):
        setup = from_main(setup_run(config, ttrain.BACKUP, quiet) if ranks.main else None, ranks)
        torch.manual_seed(0)
        model = ttrain.build_model(config).to(device)
        loop = ttrain.build_loop(setup, model, device, ranks, quiet)
        ttrain.train_one_epoch(loop, 0, "warm-up")
        times = []
        for epoch in range(1, args.epochs + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            ttrain.train_one_epoch(loop, epoch, f"epoch {epoch}")
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        reduce_ms = None
        if ranks.distributed:
            grad = torch.ones(RESNET50_VALUES, device=device)
            spans = []
            for _ in range(5):
                dist.barrier()
                start = time.perf_counter()
                dist.all_reduce(grad)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                spans.append(time.perf_counter() - start)
            reduce_ms = statistics.median(spans[1:]) * 1000
    if ranks.main:
        steps = -(-len(setup.train_df) // args.batch)
        print(json.dumps({"patients_per_s": len(setup.train_df) / statistics.median(times),
                          "step_ms": statistics.median(times) / steps * 1000, "allreduce_ms": reduce_ms}))


def launch(processes: int, args, data: Path, runs: Path) -> dict:
    """Run one torchrun launch of ``processes`` workers; rank 0's timings."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), __file__,
               "--worker", "--data", str(data), "--runs", str(runs), "--backbone", args.backbone, "--size",
               str(args.size), "--batch", str(args.batch), "--epochs", str(args.epochs), "--device", args.device,
               "--workers", str(args.workers)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(max(1, args.threads // processes))}
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"distributed.py: a launch of {processes} processes failed:\n{proc.stderr[-2000:]}")
    return json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="every GPU (NCCL), ResNet-50 at 224 px, batch 32 per GPU")
    parser.add_argument("--processes", type=int, default=2, help="processes of the parallel launch (CPU)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of both launches")
    parser.add_argument("--patients", type=int, default=200, help="synthetic patients (80%% train)")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per launch, after one warm-up")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=16, help="global batch (the same in both launches)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads shared by a launch")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=0, help="data loading workers per process")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--runs", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    if args.gpu:
        import torch

        args.processes, args.device = torch.cuda.device_count(), "cuda"
        args.backbone, args.size, args.workers = "resnet50", 224, 4
        args.batch = 32 * args.processes
        if args.processes < 2:
            sys.exit("distributed.py --gpu: needs at least two CUDA devices")
    from odir_core.data.synthetic import generate

    with tempfile.TemporaryDirectory() as tmp:
        data = generate(Path(tmp) / "set", patients=args.patients, size=args.size, seed=0)
        results = {1: [], args.processes: []}
        for _ in range(args.rounds):
            for n in results:
                results[n].append(launch(n, args, data, Path(tmp) / "runs"))
    rate = {n: [r["patients_per_s"] for r in rs] for n, rs in results.items()}
    print(f"{args.backbone} at {args.size} px, global batch {args.batch}, {args.device}, {args.rounds} rounds, "
          f"{args.threads} CPU threads per launch")
    for n, rs in results.items():
        print(f"{n} process(es): {statistics.median(rate[n]):8.1f} patients/s, "
              f"{statistics.median(r['step_ms'] for r in rs):8.1f} ms per global batch")
    ratios = [b / a for a, b in zip(rate[1], rate[args.processes])]
    print(f"{args.processes} processes / 1: x{statistics.median(ratios):.2f} "
          f"(range {min(ratios):.2f}-{max(ratios):.2f})")
    reduce = statistics.median(r["allreduce_ms"] for r in results[args.processes])
    print(f"all-reduce of a ResNet-50 gradient ({RESNET50_VALUES / 1e6:.1f} M float32, "
          f"{RESNET50_VALUES * 4 / 1e6:.0f} MB) over {args.processes} processes: {reduce:.0f} ms")


if __name__ == "__main__":
    main()
