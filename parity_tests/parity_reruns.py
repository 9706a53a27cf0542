"""The parity suite's re-runs under the other Keras backends (the backend is fixed per process).

They start as soon as the session's tests are known to include ``test_parity_suite_on_backend`` (see
``conftest.pytest_collection_finish``), at the lowest CPU priority: they use what the rest of the suite leaves
of the CPU (its subprocess starts, file work and single-threaded stretches) without slowing it, and the checks
that wait for them run last.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from parity_helpers import other_backends

ROOT = Path(__file__).resolve().parents[1]
MODULES = {"torch": "torch", "jax": "jax", "tensorflow": "tensorflow"}
# The re-runs of each backend, by marker: tensorflow checks ResNet50 and the study's heads; every backbone
# and the scm head run on torch and jax. XLA compiles on one core, so a backend's parts run side by side.
PARTS = {
    "torch": ("not slow and not backbone_zoo", "not slow and backbone_zoo"),
    "jax": ("not slow and not backbone_zoo", "not slow and backbone_zoo"),
    "tensorflow": ("not slow and not backbone_zoo",),
}
TEST_NAME = "test_parity_suite_on_backend"
STARTED: dict[str, list[tuple[subprocess.Popen, Path, str]]] = {}  # backend -> [(process, output, marks)]
_FOLDER: list[Path] = []


def _start(backend: str, marks: str, folder: Path) -> tuple[subprocess.Popen, Path, str]:
    env = dict(os.environ, KERAS_BACKEND=backend, KERAS_ODIR_PARITY_CHILD="1")
    folder.mkdir(parents=True)
    log = folder / "output.txt"
    command = [sys.executable, "-m", "pytest", str(ROOT / "parity_tests"), "-q", "-p", "no:cacheprovider",
               "-o", "addopts=", "-m", marks, "--basetemp", str(folder / "tmp")]
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
                                   preexec_fn=lambda: os.nice(19))
    return process, log, marks


def start_reruns() -> None:
    """Start every installed other backend's re-runs together (once)."""
    if STARTED or _FOLDER:
        return
    _FOLDER.append(Path(tempfile.mkdtemp(prefix="keras-odir-parity-")))
    for backend in other_backends():
        if importlib.util.find_spec(MODULES[backend]) is not None:
            STARTED[backend] = [_start(backend, marks, _FOLDER[0] / backend / f"part{i}")
                                for i, marks in enumerate(PARTS[backend])]


def stop_reruns() -> None:
    """Kill the re-runs still running (a session cut short) and remove their folder."""
    for runs in STARTED.values():
        for process, _, _ in runs:
            if process.poll() is None:
                process.kill()
                process.wait()
    for folder in _FOLDER:
        shutil.rmtree(folder, ignore_errors=True)
