"""The parity suite under every other Keras backend: the re-runs (``parity_reruns``) start when the session's
tests are collected, and these checks, run last, wait for them and report their tables."""

from __future__ import annotations

import signal
import subprocess

import pytest

from parity_helpers import CHILD_REPORTS, IS_CHILD, SUMMARY_TITLE
from parity_reruns import RERUNS, SLOW_RERUNS, STARTED, reruns


@pytest.mark.skipif(IS_CHILD, reason="already inside a per-backend re-run")
@pytest.mark.parametrize("rerun", [pytest.param(name, marks=pytest.mark.slow) if name in SLOW_RERUNS else name
                                   for name in reruns()])
def test_parity_suite_on_backend(rerun):
    backend = RERUNS[rerun][0]
    if rerun not in STARTED:
        pytest.skip(f"{backend} is not installed; install it to check parity on the {backend} backend")
    process, log, marks = STARTED[rerun]
    try:
        process.wait(timeout=3600)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    lines = log.read_text(errors="replace").splitlines()
    if any(SUMMARY_TITLE in line for line in lines):
        start = next(i for i, line in enumerate(lines) if SUMMARY_TITLE in line) + 1
        table = [line for line in lines[start:] if line.startswith(f"[{backend}]")]
        CHILD_REPORTS.extend(table)
        print("\n".join(table))
    where = f"parity suite ({marks}) on the {backend} backend"
    if process.returncode < 0:  # killed by a signal: no pytest summary, so show what it printed and how it died
        name = signal.Signals(-process.returncode).name
        pytest.fail(f"{where} died with {name} (exit {128 - process.returncode}):\n" + "\n".join(lines[-60:]),
                    pytrace=False)
    assert process.returncode == 0, f"{where} failed:\n" + "\n".join(lines[-60:])
