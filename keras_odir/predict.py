"""Predict a patient's labels from two raw photographs with a Keras model: ``python -m keras_odir.predict --help``."""

from __future__ import annotations

import sys

from keras_odir.cli_backend import BACKEND
from odir_core.evaluation import predict


def main(argv=None) -> int:
    """Command-line entry point (see odir_core.evaluation.predict)."""
    return predict.main(BACKEND, argv)


if __name__ == "__main__":
    sys.exit(main())
