"""Loading a trained torch_odir model for evaluate/predict: probabilities for a batch, Grad-CAM with hooks."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from odir_core.config import TrainConfig
from odir_core.inference import InferenceError, gradcam_map
from torch_odir.model import DualResNet50


def _device(config: TrainConfig) -> torch.device:
    if config.device in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return torch.device("cpu")
    return device


def state_dict_of(checkpoint) -> Mapping[str, torch.Tensor]:
    """The DualResNet50 state_dict in a .pth file: the file's dict itself, or the first entry that is one."""
    if isinstance(checkpoint, Mapping):
        if any(str(k).startswith("backbone.") for k in checkpoint):
            return checkpoint
        for value in checkpoint.values():
            if isinstance(value, Mapping) and any(str(k).startswith("backbone.") for k in value):
                return value
    raise InferenceError("not a torch_odir checkpoint: no DualResNet50 state_dict (keys backbone.*, head.*) in it")


class TorchPredictor:
    """A DualResNet50 in eval mode as an odir_core.inference.Predictor (NHWC numpy in, NCHW to the model)."""

    def __init__(self, model: DualResNet50, device: torch.device):
        self.model = model.to(device).eval()
        self.device = device

    def _tensor(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(self.device)

    def predict(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return torch.sigmoid(self.model(self._tensor(left), self._tensor(right))).double().cpu().numpy()

    def gradcam(self, left: np.ndarray, right: np.ndarray, label: int) -> tuple[np.ndarray, np.ndarray]:
        stage_outputs: list[torch.Tensor] = []  # layer4 output of the left, then the right eye
        hook = self.model.backbone.layer4.register_forward_hook(lambda module, inputs, output: stage_outputs.append(output))
        try:
            with torch.enable_grad():
                # inputs require grad so the graph exists even when the backbone's weights are frozen
                inputs = [self._tensor(x).requires_grad_(True) for x in (left, right)]
                logits = self.model(*inputs)
                grads = torch.autograd.grad(logits[0, label], stage_outputs)
        finally:
            hook.remove()
        return tuple(
            gradcam_map(a[0].detach().cpu().numpy(), g[0].cpu().numpy(), channels_last=False)
            for a, g in zip(stage_outputs, grads)
        )


def load_predictor(path: Path, config: TrainConfig) -> TorchPredictor:
    """Load RUN_DIR/best.pth (saved by torch_odir.train) into a DualResNet50 with the run's head."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises unpickling, zip and runtime errors alike for a damaged file
        raise InferenceError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}); "
                             "pass best.pth of a torch_odir training run") from None
    model = DualResNet50(head=config.head)
    model.load_state_dict(state_dict_of(checkpoint))
    return TorchPredictor(model, _device(config))
