"""Serve a Keras model as a local web page and JSON API: ``python -m keras_odir.serve --help``."""

from __future__ import annotations

import sys

from keras_odir.cli_backend import BACKEND
from odir_core.serving import cli


def main(argv=None) -> int:
    """Command-line entry point (see odir_core.serving.cli)."""
    return cli.main(BACKEND, argv)


if __name__ == "__main__":
    sys.exit(main())
