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
from parity_reruns import SELECTED, TEST_NAME, start_reruns, stop_reruns


@pytest.fixture
def record() -> Recorder:
    return Recorder()


@pytest.fixture(scope="session")
def backbone_state() -> dict:
    """One calibrated torchvision backbone state, shared by all heads."""
    return copy.deepcopy(calibrated_resnet50(seed=0).state_dict())


IN_WORKER: list[bool] = [False]  # a pytest-xdist worker, whose results the controller reports


def pytest_configure(config):
    IN_WORKER[0] = hasattr(config, "workerinput")


@pytest.fixture(autouse=True)
def _parity_results_to_the_controller(request):
    """Under pytest-xdist: hand each test's parity records to the controller, which prints the table."""
    results, reports = len(RESULTS), len(CHILD_REPORTS)
    yield
    if IN_WORKER[0]:
        rows = [(case, float(worst), float(scale), float(tol), note) for case, worst, scale, tol, note in RESULTS[results:]]
        request.node.user_properties.append(("parity", (rows, list(CHILD_REPORTS[reports:]))))


def pytest_runtest_logreport(report):
    if report.when == "teardown" and not IN_WORKER[0]:
        for _, (rows, reports) in (p for p in report.user_properties if p[0] == "parity"):
            RESULTS.extend(tuple(row) for row in rows)
            CHILD_REPORTS.extend(reports)


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
        SELECTED[:] = [item.callspec.params["rerun"] for item in waiting]
        if not IN_WORKER[0]:
            start_reruns(SELECTED)


def pytest_sessionfinish(session):
    stop_reruns()
