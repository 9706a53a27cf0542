"""Predict a patient's labels from two raw photographs with a PyTorch model: ``python -m torch_odir.predict --help``."""

from __future__ import annotations

import sys

from odir_core.evaluation import predict
from torch_odir.cli_backend import BACKEND


def main(argv=None) -> int:
    """Command-line entry point (see odir_core.evaluation.predict)."""
    return predict.main(BACKEND, argv)


if __name__ == "__main__":
    sys.exit(main())
