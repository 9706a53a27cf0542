"""python -m odir_core.tfds build ...: runs odir_core.data.tfds.cli."""

import sys

from odir_core.data.tfds.cli import main

if __name__ == "__main__":
    sys.exit(main())
