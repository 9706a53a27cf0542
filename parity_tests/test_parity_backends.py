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
# The re-runs of each backend, by marker: tensorflow checks ResNet50 and the study's heads; every backbone
# and the scm head run on torch and jax. The processes all start at once: XLA compiles on one core, so a
# jax re-run leaves the other core to the rest.
PARTS = {
    "torch": ("not slow and not backbone_zoo", "not slow and backbone_zoo"),
    "jax": ("not slow and not backbone_zoo", "not slow and backbone_zoo"),
    "tensorflow": ("not slow and not backbone_zoo",),
}


def _start(backend: str, marks: str, folder: Path) -> tuple[subprocess.Popen, Path]:
    env = dict(os.environ, KERAS_BACKEND=backend, KERAS_ODIR_PARITY_CHILD="1")
    folder.mkdir(parents=True)
    log = folder / "output.txt"
    command = [sys.executable, "-m", "pytest", str(ROOT / "parity_tests"), "-q", "-p", "no:cacheprovider",
               "-o", "addopts=", "-m", marks, "--basetemp", str(folder / "tmp")]
    with open(log, "w") as out:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True), log


@pytest.fixture(scope="module")
def reruns(tmp_path_factory):
    """backend -> [(process, output file)] of its re-runs, all started together; killed if left running."""
    started = {}
    if not IS_CHILD:
        for backend in other_backends():
            if importlib.util.find_spec(MODULES[backend]) is not None:
                root = tmp_path_factory.mktemp(f"parity-{backend}")
                started[backend] = [_start(backend, marks, root / f"part{i}") for i, marks in enumerate(PARTS[backend])]
    yield started
    for runs in started.values():
        for process, _ in runs:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.mark.skipif(IS_CHILD, reason="already inside a per-backend re-run")
@pytest.mark.parametrize("backend", other_backends())
def test_parity_suite_on_backend(backend, reruns):
    if backend not in reruns:
        pytest.skip(f"{backend} is not installed; install it to check parity on the {backend} backend")
    for (process, log), marks in zip(reruns[backend], PARTS[backend]):
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
