"""Loading a trained Keras model for evaluate/predict: probabilities for a batch and Grad-CAM on every backend."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from keras import ops

from keras_odir.devices import chosen_device, on_device
from keras_odir.executor import planned
from keras_odir.families.vit import PATCH_GRID
from keras_odir.folding import fold_batchnorm
from keras_odir.model import load_dual_checkpoint
from keras_odir.parts import dual_parts
from keras_odir.weights import read_keras_model, weight_table
from odir_core.evaluation.inference import InferenceError, choose_gradcam_stage, gradcam_map
from odir_core.model.backbone import keras_layer_name
from odir_core.model.checkpoints import TORCH_SUFFIXES, check_finite
from odir_core.model.families import vit
from odir_core.model.model_spec import infer_backbone


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))


def gradients(fn, *arrays: np.ndarray) -> list[np.ndarray]:
    """d fn(*arrays) / d arrays for a scalar-valued fn of Keras ops, with the active backend's autodiff
    (Keras 3 has no backend-agnostic gradient API)."""
    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        xs = [ops.convert_to_tensor(a).detach().requires_grad_(True) for a in arrays]
        return [g.detach().cpu().numpy() for g in torch.autograd.grad(fn(*xs), xs)]
    if backend == "jax":
        import jax

        grads = jax.grad(fn, argnums=tuple(range(len(arrays))))(*(jax.numpy.asarray(a) for a in arrays))
        return [np.asarray(g) for g in grads]
    if backend == "tensorflow":
        import tensorflow as tf

        xs = [tf.constant(a) for a in arrays]
        with tf.GradientTape() as tape:
            tape.watch(xs)
            y = fn(*xs)
        return [g.numpy() for g in tape.gradient(y, xs)]
    raise InferenceError(f"Grad-CAM needs the torch, jax or tensorflow Keras backend, not {backend!r}")


class KerasPredictor:
    """A dual-eye keras.Model (inputs {"left", "right"}, 8 logits) as an odir_core.evaluation.inference.Predictor."""

    def __init__(self, model: keras.Model, device: str | None = None):
        self.model = model
        self.device = device  # keras_odir.devices.chosen_device: where its inputs go (None: Keras' default)
        self.channels_first = model.inputs[0].shape[1] == 3 and model.inputs[0].shape[-1] != 3
        parts = dual_parts(model)
        with on_device(device):  # the folded convs' weights go where the model's are
            folded = fold_batchnorm(model)  # BatchNorm folded into the convs (keras_odir.folding)
        # both eyes in one backbone batch, run from a precomputed plan on torch (keras_odir.executor)
        self.inference = planned(dual_parts(folded).inference_model(folded))
        self.parts = parts  # Grad-CAM: the unfolded model, whose every layer (stage maps) is there
        self.head = parts.head
        self.spec = infer_backbone(weight_table(parts.backbone))  # the weights' keys tell the backbone
        self._stages: dict[str, tuple[keras.Model, keras.Model | None]] = {}

    def _layout(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if self.channels_first else x

    def predict(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        with on_device(self.device):
            logits = self.inference.predict_on_batch({"left": self._layout(left), "right": self._layout(right)})
        return _sigmoid(ops.convert_to_numpy(logits))

    def _logit(self, label: int):
        def fn(a_left, a_right):
            return self.head(self.parts.join(a_left, a_right), training=False)[0, label]

        return fn

    def _stage(self, stage: str) -> tuple[keras.Model, keras.Model | None]:
        """(images -> the map of torch module ``stage``, that map -> the backbone's last map; None for the last
        stage). An earlier stage's map is the output of the last layer named after it (``layer2_3_relu3``)."""
        if stage not in self._stages:
            last = self.parts.feature_map_model()
            normed_tokens = self.parts.uses_maps and self.spec.patch_size and self.spec.map_norm
            if stage == self.spec.gradcam_stage and normed_tokens:
                # the patch tokens entering the norm a head on maps gets at every position (RETFound's fc_norm)
                tokens = self.parts.backbone.get_layer(PATCH_GRID).output
                self._stages[stage] = (keras.Model(self.parts.backbone.inputs[0], tokens, name="stage_map"),
                                       keras.Model(tokens, last.output, name="stage_to_last_map"))
            elif stage == self.spec.gradcam_stage:
                self._stages[stage] = (last, None)
            else:
                prefix = keras_layer_name(stage) + "_"
                tensor = [layer for layer in self.parts.backbone.layers if layer.name.startswith(prefix)][-1].output
                self._stages[stage] = (keras.Model(self.parts.backbone.inputs[0], tensor, name="stage_map"),
                                       keras.Model(tensor, last.output, name="stage_to_last_map"))
        return self._stages[stage]

    def gradcam_stages(self, size: tuple[int, int]) -> list[tuple[str, tuple[int, int]]]:
        if self.spec.patch_size:  # a Vision Transformer: one stage, its tokens on the patch grid
            patch = self.spec.patch_size
            return [(vit.gradcam_stage(self.spec, self.parts.uses_maps), (size[0] // patch, size[1] // patch))]
        image = np.zeros((1, *size, 3), np.float32)
        out = []
        for name in (*self.spec.earlier_stages, self.spec.gradcam_stage):
            with on_device(self.device):
                shape = ops.shape(self._stage(name)[0].predict_on_batch(self._layout(image)))
            out.append((name, tuple(int(n) for n in (shape[2:] if self.channels_first else shape[1:3]))))
        return out

    def gradcam(self, left: np.ndarray, right: np.ndarray, label: int,
                stage: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        stage = stage or choose_gradcam_stage(self.gradcam_stages(left.shape[1:3]))[0]
        to_map, to_last = self._stage(stage)
        with on_device(self.device):
            maps = [ops.convert_to_numpy(to_map.predict_on_batch(self._layout(x))) for x in (left, right)]
        logit = self._logit(label)

        def fn(a_left, a_right):  # the stage's maps -> the logit (through the rest of the backbone)
            if to_last is None:
                return logit(a_left, a_right)
            return logit(to_last(a_left, training=False), to_last(a_right, training=False))

        with on_device(self.device):
            grads = gradients(fn, *maps)
        return tuple(self._gradcam_map(a[0], g[0]) for a, g in zip(maps, grads))

    def _gradcam_map(self, activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
        """Grad-CAM of one image's map, or of a Vision Transformer's tokens (1 + h * w, C) on their grid."""
        if activations.ndim == 2:
            return gradcam_map(vit.token_grid(activations), vit.token_grid(gradients))
        return gradcam_map(activations, gradients, channels_last=not self.channels_first)


def read_dual_model(path: Path) -> keras.Model:
    """RUN_DIR/best.keras (saved by keras_odir.train) without its training state, or a torch checkpoint of a dual
    model (torch_odir's best.pth, the study's .pth) converted on the fly; refused when a weight is not finite."""
    path = Path(path)
    model = load_dual_checkpoint(path) if path.suffix in TORCH_SUFFIXES else read_keras_model(path)
    check_finite(((w.path, ops.convert_to_numpy(w)) for w in model.weights), str(path))
    return model


def load_predictor(path: Path, device: str = "auto") -> KerasPredictor:
    """:func:`read_dual_model` onto ``--device`` (``keras_odir.devices``), as a predictor."""
    chosen = chosen_device(device)
    with on_device(chosen):
        model = read_dual_model(path)
    return KerasPredictor(model, chosen)
