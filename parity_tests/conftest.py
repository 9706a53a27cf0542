"""Fixtures and the end-of-run diff table of the keras_odir <-> torch parity suite.

The suite runs on the Keras backend of this process (``KERAS_BACKEND``, torch by default);
``test_parity_backends.py`` re-runs it in a subprocess for every other installed backend.
Every comparison is recorded and the worst |diff| per case is printed at the end of the run
(and as it happens with ``-s``).
"""

from __future__ import annotations

import copy

# torchvision before anything loads TensorFlow (the tensorflow backend's child run): the other order
# crashes the process (torchvision's triton dependency).
import torchvision  # noqa: F401  isort: skip

import pytest

from parity_helpers import CHILD_REPORTS, IS_CHILD, RESULTS, SUMMARY_TITLE, Recorder, calibrated_resnet50
from parity_reruns import TEST_NAME, start_reruns, stop_reruns


@pytest.fixture
def record() -> Recorder:
    return Recorder()


@pytest.fixture(scope="session")
def backbone_state() -> dict:
    """One calibrated torchvision backbone state, shared by all heads."""
    return copy.deepcopy(calibrated_resnet50(seed=0).state_dict())


def pytest_terminal_summary(terminalreporter):
    if not RESULTS and not CHILD_REPORTS:
        return
    terminalreporter.section(SUMMARY_TITLE)
    for case, worst, scale, tol, note in RESULTS:
        terminalreporter.write_line(f"{case:58s} {worst:.3e}  (max|ref| {scale:.3g}, tol {tol:.3g}{note})")
    for report in CHILD_REPORTS:
        terminalreporter.write_line(report)


def pytest_collection_finish(session):
    """When the session runs the other backends' parity checks: start their re-runs now and move the checks,
    which wait for them, to the end of the session."""
    waiting = [item for item in session.items if getattr(item, "originalname", None) == TEST_NAME]
    if waiting and not IS_CHILD and not session.config.option.collectonly:
        session.items[:] = [item for item in session.items if item not in waiting] + waiting
        start_reruns([item.callspec.params["rerun"] for item in waiting])


def pytest_sessionfinish(session):
    stop_reruns()
