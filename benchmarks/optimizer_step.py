"""Time one optimizer step over ResNet50-sized weights: TorchSGD vs Keras' SGD vs torch.optim.SGD.

Side by side in one process on the active Keras backend (torch by default; Keras' default
device, so a GPU when there is one), printing the median milliseconds per step and the
ratio to torch.optim.SGD. Keras' SGD is there for scale only (different semantics, no
weight decay).
"""

import argparse
import time

import keras_odir  # noqa: F401  (sets KERAS_BACKEND=torch when unset, before keras loads)
import keras
import numpy as np
import torch
import torchvision

from keras_odir.optimizers import TorchSGD


def resnet50_shapes():
    return [tuple(p.shape) for p in torchvision.models.resnet50(weights=None).parameters()]


def median_ms(steps: dict, repeats: int) -> dict:
    """Median ms per call of each step function, calls interleaved round-robin (fair under load)."""
    for step in steps.values():
        step()  # build / warm up
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            step()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) * 1000 for name, t in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20, help="timed steps per optimizer (median reported)")
    args = parser.parse_args(argv)
    shapes = resnet50_shapes()
    rng = np.random.default_rng(0)
    values = [rng.normal(size=s).astype(np.float32) * 0.01 for s in shapes]
    grads = [keras.ops.convert_to_tensor(v) for v in values]
    # TorchSGD's generic per-weight update (what the jax / tensorflow backends run).
    per_weight = type("TorchSGDPerWeight", (TorchSGD,),
                      {"_backend_update_step": keras.optimizers.Optimizer._backend_update_step})
    steps = {}
    for name, opt in [
        ("TorchSGD", TorchSGD(0.01, momentum=0.9, weight_decay=1e-4)),
        ("TorchSGD per-weight", per_weight(0.01, momentum=0.9, weight_decay=1e-4)),
        ("keras SGD", keras.optimizers.SGD(0.01, momentum=0.9)),
    ]:
        variables = [keras.Variable(v) for v in values]
        steps[name] = lambda opt=opt, variables=variables: opt.apply(grads, variables)
    device = keras.ops.convert_to_tensor(values[0]).device if keras.backend.backend() == "torch" else "cpu"
    params = [torch.nn.Parameter(torch.tensor(v, device=device)) for v in values]
    for p, g in zip(params, values):
        p.grad = torch.tensor(g, device=device)
    steps["torch.optim.SGD"] = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4).step
    results = median_ms(steps, args.repeats)
    base = results["torch.optim.SGD"]
    print(f"backend {keras.backend.backend()}, {len(shapes)} ResNet50 tensors, "
          f"{sum(int(np.prod(s)) for s in shapes) / 1e6:.1f} M values")
    for name, ms in results.items():
        print(f"{name:20s} {ms:8.2f} ms/step   x{ms / base:.2f} of torch.optim.SGD")


if __name__ == "__main__":
    main()
