"""Build the odir5k TensorFlow Datasets dataset: python -m odir_core.tfds build --source PATH [--variant NAME].

PATH is an ODIR-5K folder or zip in any layout (grand-challenge, Kaggle, OIA-ODIR, or a
folder from python -m odir_core.prepare), or a folder holding such a zip. The dataset is written to
DATA_DIR/odir5k/VARIANT/1.0.0 as ArrayRecord files (VARIANT: the TFDS builder config); building an
existing one does nothing. Every flag is also a key of --config FILE.toml.
Bad images are reported and their patients skipped (DATA_DIR/odir5k/VARIANT/1.0.0/build_report.csv);
an error writing DATA_DIR (disk full, read-only) stops the build with one line and exit code 1.
Read it with tfds.data_source("odir5k/VARIANT", data_dir=DATA_DIR), or train on it with
--data tfds:odir5k/VARIANT (set TFDS_DATA_DIR=DATA_DIR when DATA_DIR is not the default).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pandas as pd

from odir_core.atomic import atomic_write_text
from odir_core.data.prepare import REPORT_COLUMNS
from odir_core.data.tfds.builder import CONFIGS, Odir5k, config_by_name, find_source
from odir_core.errors import run_cli, writing
from odir_core.spreadsheets import quote_csv
from odir_core.cli_config import add_config_option, parse_with_config

REPORT_NAME = "build_report.csv"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m odir_core.tfds", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    build = commands.add_parser(
        "build",
        help="build the odir5k dataset from a manual download",
        description="Build the odir5k dataset (one config) from a manual download of ODIR-5K.",
    )
    add_config_option(build)
    build.add_argument(
        "--source", metavar="PATH",
        help="ODIR-5K folder or zip in any known layout, or a folder holding such a zip (required)",
    )
    build.add_argument(
        "--variant", default="prepared_512",
        help=f"which dataset (the TFDS builder config): {', '.join(c.name for c in CONFIGS)} (original files), or "
        "prepared_<size> (default: prepared_512)",
    )
    build.add_argument(
        "--data-dir", default=None,
        help="TFDS data folder (default: $TFDS_DATA_DIR, else ~/tensorflow_datasets)",
    )
    build.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel image processes (default: the number of CPU cores)")
    return parser


def build(args) -> int:
    """Build one config; returns the process exit status."""
    config = config_by_name(args.variant)
    builder = Odir5k(config=config, data_dir=args.data_dir, workers=args.workers, source=args.source)
    target = Path(builder.data_path)
    if builder.is_prepared():
        print(f"odir5k/{config.name} is already built in {target}; nothing to do")
        return 0
    find_source(args.source)  # fail early, with the download instructions, on a wrong folder
    with writing(target.parent):  # an unwritable data folder fails here, before any image is read
        target.parent.mkdir(parents=True, exist_ok=True)
    import tensorflow_datasets as tfds

    manual_dir = Path(args.source)
    manual_dir = manual_dir if manual_dir.is_dir() else manual_dir.parent  # TFDS wants a folder
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    for name, split in builder.info.splits.items():
        print(f"{name}: {split.num_examples} patients")
    report = builder.info.metadata.get("report", [])
    if report:
        table = pd.DataFrame(report, columns=["split", *REPORT_COLUMNS])
        atomic_write_text(target / REPORT_NAME, quote_csv(table).to_csv(index=False))
        errors = int((table["status"] == "error").sum())
        print(f"{errors} image(s) skipped and {len(table) - errors} repaired (see {target / REPORT_NAME})")
    print(f"odir5k/{config.name} written to {target}")
    return 0 if builder.info.splits["train"].num_examples else 1


def main(argv=None) -> int:
    """Command-line entry point."""
    parser = build_parser()
    build_command = parser._subparsers._group_actions[0].choices["build"]
    args = parse_with_config(parser, argv, options=build_command)
    if not args.source:
        build_command.error("--source is required (on the command line or as source in --config)")
    if args.workers < 1:
        build_command.error("--workers must be at least 1")
    return run_cli(build, args)  # bad input: exit 2; an unwritable --data-dir (an OSError): exit 1
