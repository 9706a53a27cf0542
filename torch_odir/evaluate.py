"""Evaluate a trained PyTorch model (or a probabilities file): ``python -m torch_odir.evaluate --help``."""

from __future__ import annotations

import sys

from odir_core.evaluation import evaluate
from torch_odir.cli_backend import BACKEND


def main(argv=None) -> int:
    """Command-line entry point (see odir_core.evaluation.evaluate)."""
    return evaluate.main(BACKEND, argv)


if __name__ == "__main__":
    sys.exit(main())
