"""python -m odir_core.prepare: runs odir_core.data.prepare."""

import sys

from odir_core.data.prepare import main

if __name__ == "__main__":
    sys.exit(main())
