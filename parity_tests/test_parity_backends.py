"""Re-run the parity suite under every other Keras backend (the backend is fixed per process)."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from parity_helpers import CHILD_REPORTS, IS_CHILD, SUMMARY_TITLE, other_backends

ROOT = Path(__file__).resolve().parents[1]
MODULES = {"torch": "torch", "jax": "jax", "tensorflow": "tensorflow"}


@pytest.mark.skipif(IS_CHILD, reason="already inside a per-backend re-run")
@pytest.mark.parametrize("backend", other_backends())
def test_parity_suite_on_backend(backend):
    if importlib.util.find_spec(MODULES[backend]) is None:
        pytest.skip(f"{backend} is not installed; install it to check parity on the {backend} backend")
    env = dict(os.environ, KERAS_BACKEND=backend, KERAS_ODIR_PARITY_CHILD="1")
    # tensorflow checks ResNet50 and the study's heads; every backbone and the scm head run on torch and jax
    marks = "not slow and not backbone_zoo" if backend == "tensorflow" else "not slow"
    command = [sys.executable, "-m", "pytest", str(ROOT / "parity_tests"), "-q", "-p", "no:cacheprovider",
               "-o", "addopts=", "-m", marks]
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    output = run.stdout + run.stderr
    lines = output.splitlines()
    if SUMMARY_TITLE in output:
        start = next(i for i, line in enumerate(lines) if SUMMARY_TITLE in line) + 1
        table = [line for line in lines[start:] if line.startswith(f"[{backend}]")]
        CHILD_REPORTS.extend(table)
        print("\n".join(table))
    if run.returncode < 0:  # killed by a signal: no pytest summary, so show what it printed and how it died
        name = signal.Signals(-run.returncode).name
        pytest.fail(f"parity suite on the {backend} backend died with {name} (exit {128 - run.returncode}):\n"
                    + "\n".join(lines[-60:]), pytrace=False)
    assert run.returncode == 0, f"parity suite failed on the {backend} backend:\n" + "\n".join(lines[-60:])
