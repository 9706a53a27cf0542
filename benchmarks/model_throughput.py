"""Dual-model throughput, side by side: torch_odir against keras_odir on the torch and jax backends.

The configurations of one Keras backend run in one process, interleaved in rounds (A, B, C, A, B,
C, ...) so that a busy machine slows them alike; each round times every configuration on the same
batch. The Keras backend is fixed per process, so the jax configuration runs in a second process
that times torch_odir again beside it (tensorflow likewise, when asked for). Printed: pairs/s
(median over rounds) for a training step (forward, backward, SGD update) and for inference, and
the median ratio to torch_odir in the same rounds with its range (> 1 is faster than torch_odir).
"keras/torch folded" is the inference model that evaluate/predict use, BatchNorm folded into the convs
(``keras_odir.folding``); it has no training step (training never folds). "... executor": the same models
run from their precomputed plan (``keras_odir.executor.planned``), as keras_odir.train and KerasPredictor
run them on torch; without it, Keras' own functional call. ``--compile``: torch_odir and keras_odir's executor
each eager and under ``torch.compile`` (the trainers' ``--compile``: keras_odir compiles its plan), with the
first step of each (the compilation) in its own column.

    python benchmarks/model_throughput.py                       # 64 and 224 px, batch 8, float32
    python benchmarks/model_throughput.py --regime launch       # 32 px, 2 pairs, 1 thread: the framework's own cost
    python benchmarks/model_throughput.py --regime launch --backends torch --compile   # compiled against compiled
    python benchmarks/model_throughput.py --backbone all --sizes 64   # every registered backbone
    python benchmarks/model_throughput.py --precision bf16 --sizes 224 --rounds 7
    python benchmarks/model_throughput.py --device cuda --sizes 224 448 --batch 32
    python benchmarks/model_throughput.py --backbone efficientnet_b0 --sizes 64 --backends torch jax tensorflow
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = "torch_odir"
CONFIGS_BY_BACKEND = {
    "torch": ("torch_odir", "torch_odir NCHW", "keras/torch", "keras/torch executor", "keras/torch folded",
              "keras/torch folded executor"),
    "jax": ("torch_odir", "keras/jax"),
    "tensorflow": ("torch_odir", "keras/tensorflow"),
}
COMPILED_CONFIGS = ("torch_odir", "torch_odir compiled", "keras/torch executor", "keras/torch compiled executor")
DEFAULT_BACKENDS = ("torch", "jax")  # tensorflow-cpu has no GPU build: asked for by name
# Named settings of (sizes, batch, threads). "launch": so little compute per layer that a step takes as long as
# the Python that launches its kernels, the regime a GPU puts every size in; "compute": the CPU's own regime.
REGIMES = {"launch": ([32], 2, 1), "compute": ([64, 224], 8, 2)}


def _batch(batch: int, size: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    left = rng.standard_normal((batch, size, size, 3)).astype("float32")
    right = rng.standard_normal((batch, size, size, 3)).astype("float32")
    labels = (rng.random((batch, 8)) < 0.3).astype("float32")
    return left, right, labels


def torch_steps(batch, size, precision: str, device: str, backbone: str, channels_last: bool, compiled=False):
    """(train step, inference) closures of torch_odir's DualNet: eager (``compiled``: under ``torch.compile``),
    SGD + BCEWithLogits."""
    import torch

    from torch_odir.model import DualNet

    memory = torch.channels_last if channels_last else torch.contiguous_format
    left, right, labels = (torch.from_numpy(a).to(device) for a in _batch(batch, size))
    left, right = (x.permute(0, 3, 1, 2).contiguous(memory_format=memory) for x in (left, right))
    network = DualNet(backbone, "v0").to(device, memory_format=memory)
    model = torch.compile(network) if compiled else network
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

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
        with torch.inference_mode(), autocast:
            model(left, right)
        sync()

    return train, infer


def keras_steps(batch, size, precision: str, backbone: str, folded: bool = False, executor: bool = False,
                compiled: bool = False):
    """(train step, inference) closures of keras_odir's dual model: the step ``fit`` runs on each batch (on torch its
    ``train_function`` on the batch's tensors; elsewhere ``train_on_batch``) with the trainer's optimizer and loss,
    and ``predict_on_batch`` of the inference model (both eyes in one backbone batch).
    ``folded``: (None, inference of the model with its BatchNorms folded), as evaluate/predict run it.
    ``executor``: both models run from their plan (``keras_odir.executor``), ``compiled``: under torch.compile."""
    import keras

    from keras_odir.executor import planned

    from keras_odir.folding import fold_batchnorm
    from keras_odir.losses import WeightedBCEWithLogits
    from keras_odir.model import build_dual_model
    from keras_odir.optimizers import TorchSGD
    from keras_odir.parts import dual_parts

    if precision != "float32":
        keras.mixed_precision.set_global_policy({"bf16": "mixed_bfloat16", "fp16": "mixed_float16"}[precision])
    left, right, labels = _batch(batch, size)
    model = build_dual_model(backbone, "v0", image_size=size)
    wrap = (lambda m: planned(m, compile=compiled)) if executor else (lambda m: m)
    model = wrap(model)
    model.compile(optimizer=TorchSGD(learning_rate=0.01, momentum=0.9), loss=WeightedBCEWithLogits())
    inference = wrap(dual_parts(model).inference_model(model))
    x = {"left": left, "right": right}
    keras.mixed_precision.set_global_policy("float32")
    if folded:
        model = fold_batchnorm(model)
        inference = wrap(dual_parts(model).inference_model(model))
        return None, (lambda: inference.predict_on_batch(x))
    return _fit_step(model, x, labels), (lambda: inference.predict_on_batch(x))


def _fit_step(model, x, labels):
    """One training step as ``fit`` takes it. On torch, fit calls ``model.train_function`` on each batch of tensors;
    ``train_on_batch`` adds a build check that walks every layer and re-registers every weight with torch, and a
    host sync for its logs, at each call (about 2 % of a launch-bound ResNet50 step)."""
    import keras

    model.train_on_batch(x, labels)  # builds the optimizer and the compiled loss and metrics, as fit does first
    if keras.backend.backend() != "torch":
        return lambda: model.train_on_batch(x, labels)
    batch = [(keras.tree.map_structure(keras.ops.convert_to_tensor, x), keras.ops.convert_to_tensor(labels), None)]
    return lambda: model.train_function(batch)


def worker(args) -> None:
    """Time this process's configurations in interleaved rounds; print one JSON line of seconds per step."""
    import torch

    torch.set_num_threads(args.threads)
    backend = os.environ["KERAS_BACKEND"]
    steps = {}
    configs = COMPILED_CONFIGS if args.compile and backend == "torch" else CONFIGS_BY_BACKEND[backend]
    for config in configs:
        compiled = "compiled" in config
        if config.startswith("torch_odir"):
            steps[config] = torch_steps(args.batch, args.size, args.precision, args.device, args.backbone,
                                        channels_last="NCHW" not in config, compiled=compiled)
        else:
            steps[config] = keras_steps(args.batch, args.size, args.precision, args.backbone,
                                        folded="folded" in config, executor=config.endswith("executor"),
                                        compiled=compiled)
    times = {config: {kind: [] for kind, index in (("train", 0), ("infer", 1)) if pair[index] is not None}
             for config, pair in steps.items()}
    first = {config: {} for config in steps}  # seconds of each configuration's first step (compilation)
    for kind, index in (("train", 0), ("infer", 1)):
        timed = {config: pair for config, pair in steps.items() if pair[index] is not None}
        for config, pair in timed.items():
            for warmup in range(args.warmup):
                start = time.perf_counter()
                pair[index]()
                if warmup == 0:
                    first[config][kind] = time.perf_counter() - start
        for _ in range(args.rounds):
            for config, pair in timed.items():
                start = time.perf_counter()
                for _ in range(args.iters):
                    pair[index]()
                times[config][kind].append((time.perf_counter() - start) / args.iters)
    print("RESULT " + json.dumps({"times": times, "first": first}))


def run_backend(backend: str, size: int, args) -> dict | str:
    """One Keras backend's configurations in a fresh process; seconds per step per round, or why none."""
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(args.threads))
    command = [sys.executable, __file__, "--worker", "--sizes", str(size), "--batch", str(args.batch),
               "--iters", str(args.iters), "--warmup", str(args.warmup), "--rounds", str(args.rounds),
               "--precision", args.precision, "--threads", str(args.threads), "--device", args.device,
               "--backbone", args.backbone, *(["--compile"] if args.compile else [])]
    try:
        run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return f"timeout after {args.timeout}s"
    for line in run.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    error_lines = [line for line in (run.stderr or "").splitlines() if line.strip()]
    return "failed: " + (error_lines[-1][:160] if error_lines else f"exit {run.returncode}")


def summarize(times: dict) -> dict:
    """Per configuration and kind: pairs/s is computed by the caller; here median seconds and the median,
    min and max of the per-round ratio torch_odir time / configuration time."""
    out = {}
    times = times["times"]
    for config, kinds in times.items():
        out[config] = {}
        for kind, seconds in kinds.items():
            ratios = [ref / t for ref, t in zip(times[REFERENCE][kind], seconds)]
            out[config][kind] = {"seconds": statistics.median(seconds), "ratio": statistics.median(ratios),
                                 "low": min(ratios), "high": max(ratios)}
    return out


def table(results: dict, args) -> str:
    """The results as a plain-text table (also Markdown-readable)."""
    lines = [f"{args.backbone}, batch {args.batch} pairs, {args.precision}, {args.device}, {args.threads} threads, "
             f"{args.rounds} interleaved rounds of {args.iters} steps after {args.warmup} warm-up; "
             "pairs/s and ratio to torch_odir (median, range over rounds)",
             "| size | configuration | train step | inference | first train / inference step, s |",
             "|---|---|---|---|---|"]
    for (size, backend), result in results.items():
        if isinstance(result, str):
            lines.append(f"| {size} | {backend} backend | {result} | |")
            continue
        for config, kinds in summarize(result).items():
            if config == REFERENCE and backend != "torch":
                continue
            cells = [f"{args.batch / k['seconds']:.2f} ({k['ratio']:.2f}x, {k['low']:.2f}-{k['high']:.2f})"
                     if k else "-" for k in (kinds.get("train"), kinds.get("infer"))]
            firsts = " / ".join(f"{s:.1f}" for s in result["first"][config].values())
            lines.append(f"| {size} | {config} | {cells[0]} | {cells[1]} | {firsts} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regime", choices=list(REGIMES),
                        help="preset sizes, batch and threads: launch = 32 px, 2 pairs, 1 thread (per-layer framework "
                        "cost, as on a GPU); compute = 64 and 224 px, 8 pairs, 2 threads; flags given as well override it")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224], help="square image sizes to run")
    parser.add_argument("--batch", type=int, default=8, help="pairs (left + right images) per step")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (the median is reported)")
    parser.add_argument("--iters", type=int, default=2, help="timed steps per configuration and round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation, caches)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads (OMP too)")
    parser.add_argument("--precision", choices=("float32", "bf16", "fp16"), default="float32",
                        help="bf16/fp16: Keras mixed_bfloat16/mixed_float16 policy vs torch autocast")
    parser.add_argument("--device", default="cpu", help="torch_odir's device: cpu or cuda")
    parser.add_argument("--backbone", default="resnet50",
                        help="backbone of odir_core.model.model_spec, or all: every registered backbone in turn")
    parser.add_argument("--backends", nargs="+", choices=list(CONFIGS_BY_BACKEND), default=list(DEFAULT_BACKENDS),
                        help="Keras backends to compare with torch_odir")
    parser.add_argument("--compile", action="store_true",
                        help="torch backend: torch_odir and keras_odir's executor, eager and under torch.compile")
    parser.add_argument("--json", type=Path, help="also write the raw per-round times here")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds allowed per backend and size")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.regime:
        given = set(argv if argv is not None else sys.argv[1:])
        sizes, batch, threads = REGIMES[args.regime]
        args.sizes = args.sizes if "--sizes" in given else sizes
        args.batch = args.batch if "--batch" in given else batch
        args.threads = args.threads if "--threads" in given else threads
    if args.worker:
        args.size = args.sizes[0]
        worker(args)
        return 0
    from odir_core.model.model_spec import BACKBONES

    backbones = list(BACKBONES) if args.backbone == "all" else [args.backbone]
    raw = {}
    for backbone in backbones:
        bench = argparse.Namespace(**{**vars(args), "backbone": backbone})
        results = {}
        for size in args.sizes:
            for backend in args.backends:
                print(f"{backbone}, {size} px, {backend} backend ...", file=sys.stderr, flush=True)
                results[size, backend] = run_backend(backend, size, bench)
                raw[f"{backbone} {size} {backend}"] = results[size, backend]
        print(table(results, bench), flush=True)
    if args.json:
        args.json.write_text(json.dumps(raw, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
