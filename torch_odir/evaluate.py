"""Evaluate a trained PyTorch model (or a probabilities file): ``python -m torch_odir.evaluate --help``."""

from __future__ import annotations

import sys

from odir_core.evaluation import evaluate
from odir_core.evaluation.inference import Backend
from odir_core.model.checkpoints import TORCH_SUFFIXES

BACKEND = Backend(name="torch_odir", model_suffixes=TORCH_SUFFIXES, loader="torch_odir.inference:load_predictor",
                  torch_load="torch_odir.model:torch_load")


def main(argv=None) -> int:
    """Command-line entry point (see odir_core.evaluation.evaluate)."""
    return evaluate.main(BACKEND, argv)


if __name__ == "__main__":
    sys.exit(main())
