"""Evaluate a trained Keras model (or a probabilities file): ``python -m keras_odir.evaluate --help``."""

from __future__ import annotations

import sys

from keras_odir.cli_backend import BACKEND
from odir_core.evaluation import evaluate


def main(argv=None) -> int:
    """Command-line entry point (see odir_core.evaluation.evaluate)."""
    return evaluate.main(BACKEND, argv)


if __name__ == "__main__":
    sys.exit(main())
