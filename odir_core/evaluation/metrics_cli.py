"""The command ``python -m odir_core.metrics`` (``odir-metrics``): score a probabilities file against its ground
truth with the study's and the official ODIR-2019 metrics (:mod:`odir_core.scores`) and print a per-label table;
the files are read and checked by :mod:`odir_core.evaluation.submission`."""

from __future__ import annotations

import argparse
import sys
import warnings

from odir_core.errors import run_cli
from odir_core.evaluation.submission import align_submission, check_submission, check_values, read_label_file
from odir_core.labels import LABELS, NUM_LABELS
from odir_core.scores import MetricsWarning, format_report


def _parse_threshold(text: str):
    try:
        parts = [float(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or a comma-separated list of {NUM_LABELS} numbers") from None
    return parts[0] if len(parts) == 1 else parts


NAME = "odir_core.metrics"  # the command (python -m odir_core.metrics) in its error and warning lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m odir_core.metrics",
        description="Score ODIR-5K probabilities against ground truth with the study's metrics and the official "
        "ODIR-2019 metrics, and print a per-label table.",
    )
    parser.add_argument("ground_truth", help="ground-truth labels, .xlsx or .csv with columns ID,N,D,G,C,A,H,M,O (0/1)")
    parser.add_argument("probs", help="predicted probabilities, .xlsx or .csv with columns ID,N,D,G,C,A,H,M,O in the ground truth's row order")
    parser.add_argument(
        "--threshold",
        type=_parse_threshold,
        default=0.5,
        help="decision threshold: one number for all labels or 8 comma-separated numbers in N..O order; "
        "a probability strictly above it counts as positive (default 0.5, as the official evaluation)",
    )
    parser.add_argument(
        "--align",
        action="store_true",
        help="reorder the probabilities' rows and columns to the ground truth instead of rejecting a file in another "
        "order (missing or extra IDs are still errors)",
    )
    return parser


def main(argv=None) -> int:
    """Command-line entry point; returns 0, or 2 with one error line on bad input (see odir_core.errors)."""
    args = build_parser().parse_args(argv)
    return run_cli(_metrics_cli, args, prefix=f"{NAME}: error")


def _metrics_cli(args) -> int:
    gt = read_label_file(args.ground_truth)
    check_values(gt, args.ground_truth, binary=True)
    if args.align:
        probs = read_label_file(args.probs)
        check_values(probs, args.probs, binary=False)
        probs = align_submission(probs, gt)
    else:
        check_submission(args.probs, gt)
        probs = read_label_file(args.probs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MetricsWarning)
        text = format_report(gt[list(LABELS)], probs[list(LABELS)], args.threshold)
    for message in dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, MetricsWarning)):
        print(f"{NAME}: warning: {message}", file=sys.stderr)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
