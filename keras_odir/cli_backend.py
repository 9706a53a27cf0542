"""What keras_odir plugs into the shared evaluate and predict commands (``odir_core.evaluation.inference.Backend``):
the model files it loads and, by name, its loaders, imported only when a model is loaded."""

from __future__ import annotations

from odir_core.evaluation.inference import Backend
from odir_core.model.checkpoints import KERAS_SUFFIX, TORCH_SUFFIXES

BACKEND = Backend(name="keras_odir", model_suffixes=(KERAS_SUFFIX, *TORCH_SUFFIXES), loader="keras_odir.inference:load_predictor",
                  torch_load="keras_odir.weights:torch_load")
