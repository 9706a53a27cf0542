"""The tests find the study's reference files through $ODIR_REFERENCE and skip with one message without them."""

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_default_folder_is_shared_reference_beside_the_repository():
    env = {k: v for k, v in os.environ.items() if k != "ODIR_REFERENCE"}
    done = subprocess.run([sys.executable, "-c", "import reference_data; print(reference_data.REFERENCE)"], env=env,
                          cwd=TESTS, capture_output=True, text=True, check=True, timeout=60)
    assert Path(done.stdout.strip()) == TESTS.parents[1] / "shared" / "reference"


def test_odir_reference_points_the_tests_at_another_folder_and_they_skip_saying_what_it_is(tmp_path):
    empty = tmp_path / "reference"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           str(TESTS / "test_sampler.py"), "-k", "real_annotations"],
                          env={**os.environ, "ODIR_REFERENCE": str(empty)}, cwd=TESTS.parent,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    out = " ".join(done.stdout.split())
    assert "1 skipped" in out
    assert (f"reference file {empty / 'odir5k_annotations.xlsx'} not found: set ODIR_REFERENCE to the folder of the "
            f"study's reference files (now {empty}): the ODIR-5K annotations from the ODIR-5K release; the study's "
            "probabilities, ground truth, training histories and sample photographs from its public repository") in out
