"""What torch_odir plugs into the shared evaluate and predict commands (``odir_core.evaluation.inference.Backend``):
the model files it loads and, by name, its loaders, imported only when a model is loaded (so ``--help`` and
``--probs`` evaluation do not import torch)."""

from __future__ import annotations

from odir_core.evaluation.inference import Backend
from odir_core.model.checkpoints import TORCH_SUFFIXES

BACKEND = Backend(name="torch_odir", model_suffixes=TORCH_SUFFIXES, loader="torch_odir.inference:load_predictor",
                  torch_load="torch_odir.model:torch_load")
