"""python -m odir_core.audit: runs odir_core.data.audit."""

import sys

from odir_core.data.audit import main

if __name__ == "__main__":
    sys.exit(main())
