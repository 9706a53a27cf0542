"""Loading a trained torch_odir model for evaluate/predict: probabilities for a batch, Grad-CAM with hooks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from odir_core.evaluation.inference import choose_gradcam_stage, gradcam_map
from odir_core.model.checkpoints import check_finite
from odir_core.model.families import vit
from torch_odir.devices import resolve_device
from torch_odir.model import DualNet, MapHead, dual_model_from_state, read_torch_state


class TorchPredictor:
    """A DualNet in eval mode as an odir_core.evaluation.inference.Predictor (NHWC numpy in, NCHW to the model)."""

    def __init__(self, model: DualNet, device: torch.device):
        self.model = model.to(device).eval()
        self.device = device

    def _tensor(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).to(self.device)  # channels_last

    def predict(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return torch.sigmoid(self.model(self._tensor(left), self._tensor(right))).double().cpu().numpy()

    def gradcam_stages(self, size: tuple[int, int]) -> list[tuple[str, tuple[int, int]]]:
        spec, found = self.model.spec, {}
        if spec.patch_size:  # a Vision Transformer: one stage, its tokens on the patch grid
            stage = vit.gradcam_stage(spec, isinstance(self.model.head, MapHead))
            return [(stage, (size[0] // spec.patch_size, size[1] // spec.patch_size))]
        names = (*spec.earlier_stages, spec.gradcam_stage)

        def hook(name):
            def record(module, inputs, output):  # returns None: the output is kept as it is
                found[name] = tuple(output.shape[-2:])
            return record

        hooks = [self.model.backbone.get_submodule(name).register_forward_hook(hook(name)) for name in names]
        try:
            with torch.inference_mode():
                self.model.backbone(torch.zeros(1, 3, *size, device=self.device))
        finally:
            for handle in hooks:
                handle.remove()
        return [(name, found[name]) for name in names]

    def gradcam(self, left: np.ndarray, right: np.ndarray, label: int,
                stage: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        stage = stage or choose_gradcam_stage(self.gradcam_stages(left.shape[1:3]))[0]
        stage_outputs: list[torch.Tensor] = []  # the stage's feature maps: both eyes stacked (eval mode)
        module = self.model.backbone.get_submodule(stage)
        hook = module.register_forward_hook(lambda module, inputs, output: stage_outputs.append(output))
        try:
            with torch.enable_grad():
                # inputs require grad so the graph exists even when the backbone's weights are frozen
                inputs = [self._tensor(x).detach().requires_grad_(True) for x in (left, right)]
                logits = self.model(*inputs)
                grads = torch.autograd.grad(logits[0, label], stage_outputs)
        finally:
            hook.remove()
        maps, grads = torch.cat(stage_outputs).chunk(2), torch.cat(grads).chunk(2)  # left, right
        return tuple(_gradcam_map(a[0].detach().cpu().numpy(), g[0].cpu().numpy()) for a, g in zip(maps, grads))


def _gradcam_map(activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """Grad-CAM of one image's map (C, h, w), or of a Vision Transformer's tokens (1 + h * w, C) on their grid."""
    if activations.ndim == 2:
        return gradcam_map(vit.token_grid(activations), vit.token_grid(gradients), channels_last=True)
    return gradcam_map(activations, gradients, channels_last=False)


def load_predictor(path: Path, device: str = "auto") -> TorchPredictor:
    """Load a dual model's .pth (torch_odir's best.pth, the study's own) onto ``--device``; backbone and head from
    its keys."""
    state = read_torch_state(path)
    check_finite(((k, v.float()) for k, v in state.items() if v.is_floating_point()), str(path))
    return TorchPredictor(dual_model_from_state(state), resolve_device(device))
