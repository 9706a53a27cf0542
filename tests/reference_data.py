"""Where the tests find the study's reference files, and the one skip message when they are absent.

``$ODIR_REFERENCE`` names the folder; by default ``shared/reference`` beside the repository
(``../shared/reference`` from its root). It holds real data the project cannot ship: the ODIR-5K
training annotations (from the ODIR-5K release), and the study's saved probabilities, ground truth,
training histories and sample photographs (from the study's public repository).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ENV = "ODIR_REFERENCE"
REFERENCE = Path(os.environ.get(ENV) or Path(__file__).resolve().parents[2] / "shared" / "reference").expanduser()
ANNOTATIONS = REFERENCE / "odir5k_annotations.xlsx"
EXPERIMENTS = REFERENCE / "seed_experiments"
STUDY_TABLE = REFERENCE / "seed_experiments.csv"
REAL_SAMPLES = REFERENCE / "real_samples"


def missing(path: Path) -> str:
    """The skip reason for a test whose reference file ``path`` is absent."""
    return (f"reference file {path} not found: set {ENV} to the folder of the study's reference files "
            f"(now {REFERENCE}): the ODIR-5K annotations from the ODIR-5K release; the study's probabilities, "
            "ground truth, training histories and sample photographs from its public repository")


def require(path: Path) -> Path:
    """``path``, or skip the running test when it is absent."""
    if not Path(path).exists():
        pytest.skip(missing(path))
    return Path(path)


def needs(path: Path) -> pytest.MarkDecorator:
    """Mark a test (or module) to skip when ``path`` is absent."""
    return pytest.mark.skipif(not Path(path).exists(), reason=missing(path))
