"""python -m odir_core.synthetic: runs odir_core.data.synthetic."""

import sys

from odir_core.data.synthetic import main

if __name__ == "__main__":
    sys.exit(main())
