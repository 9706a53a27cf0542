"""python -m odir_core.metrics: runs odir_core.evaluation.metrics_cli (the scores are odir_core.scores)."""

import sys

from odir_core.evaluation.metrics_cli import main

if __name__ == "__main__":
    sys.exit(main())
