"""Seconds from a fresh process to a ready model: keras_odir's initialisers drawn on the host with NumPy
(``keras_odir.initializers``) against Keras' own random initialisers in the same layers.

Each round starts two processes per variant, interleaved (Keras', host, Keras', host, ...), on the chosen Keras
backend: one builds the dual model and saves it, the next loads it as evaluate, predict and serve do (the
``.keras`` file, then the BatchNorm-folded inference model). Prints the median seconds of each step, and the
median ratio Keras' / host with its range over the rounds. On jax every random draw of Keras' is a compiled
program per weight shape; on torch and tensorflow the two should be alike.

    python benchmarks/model_start.py --backend jax --backbone resnet50 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("build", "load")

CHILD = """
import sys, time
import keras
import keras_odir.initializers as initializers
variant, step, backbone, head, folder = sys.argv[1:]
if variant == "keras":  # the same layers with Keras' own initialisers (bound before the builders import them)
    initializers.RandomNormal = keras.initializers.RandomNormal
    initializers.RandomUniform = keras.initializers.RandomUniform
    initializers.VarianceScaling = keras.initializers.VarianceScaling
from keras_odir.inference import load_predictor
from keras_odir.model import build_dual_model
from odir_core.training.config import TrainConfig
from odir_core.training.config_files import save_config
start = time.perf_counter()
if step == "build":
    model = build_dual_model(backbone, head)
    print(time.perf_counter() - start)
    model.save(folder + "/best.keras")
    save_config(TrainConfig(data="data", backbone=backbone, head=head, weights="none"), folder + "/config.toml")
else:
    load_predictor(folder + "/best.keras")
    print(time.perf_counter() - start)
"""


def one_variant(variant: str, backend: str, backbone: str, head: str) -> dict[str, float]:
    """Two fresh processes of ``variant`` ("keras" or "host"): one builds the model and saves it (a training
    run's start and end), the next loads it (evaluate, predict, serve); the seconds of each step."""
    env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu"}
    seconds = {}
    with tempfile.TemporaryDirectory() as folder:
        for step in STEPS:
            done = subprocess.run([sys.executable, "-c", CHILD, variant, step, backbone, head, folder], cwd=ROOT,
                                  env=env, capture_output=True, text=True, timeout=1800)
            if done.returncode != 0:
                sys.exit(f"{variant} {step} failed:\n{done.stderr[-3000:]}")
            seconds[step] = float(done.stdout.strip().splitlines()[-1])
    return seconds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="jax", choices=["jax", "torch", "tensorflow"])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--head", default="v0")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    times = {variant: {step: [] for step in STEPS} for variant in ("keras", "host")}
    for _ in range(args.rounds):
        for variant in times:
            for step, seconds in one_variant(variant, args.backend, args.backbone, args.head).items():
                times[variant][step].append(seconds)
    print(f"{args.backend}, {args.backbone} + {args.head}, {args.rounds} rounds "
          "(median s; Keras' / host: median, range)")
    for step in STEPS:
        keras_s, host_s = np.array(times["keras"][step]), np.array(times["host"][step])
        ratios = keras_s / host_s
        print(f"{step:6s} Keras' initialisers {np.median(keras_s):6.2f}   host {np.median(host_s):6.2f}   "
              f"{np.median(ratios):5.1f}x ({ratios.min():.1f}-{ratios.max():.1f})")


if __name__ == "__main__":
    main()
