"""Evaluate a trained Keras model (or a probabilities file): ``python -m keras_odir.evaluate --help``."""

from __future__ import annotations

import sys

from odir_core.evaluation import evaluate
from odir_core.evaluation.inference import Backend
from odir_core.model.checkpoints import KERAS_SUFFIX, TORCH_SUFFIXES

BACKEND = Backend(name="keras_odir", model_suffixes=(KERAS_SUFFIX, *TORCH_SUFFIXES), loader="keras_odir.inference:load_predictor",
                  torch_load="keras_odir.weights:torch_load")


def main(argv=None) -> int:
    """Command-line entry point (see odir_core.evaluation.evaluate)."""
    return evaluate.main(BACKEND, argv)


if __name__ == "__main__":
    sys.exit(main())
