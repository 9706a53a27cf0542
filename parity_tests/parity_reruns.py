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
# The re-runs, by name: (backend, marker expression). Every backend checks ResNet50, the study's heads, the
# ML-Decoder and the losses; the other backbones and the map heads on them (marker backbone_zoo) run in this
# process (torch by default) and, as a slow check (``-m slow``), again on jax: the layers are the same Keras
# code on every backend, and the backend's own kernels are already checked on ResNet50 and the heads.
RERUNS = {
    "torch": ("torch", "not slow and not backbone_zoo"),
    "torch-zoo": ("torch", "not slow and backbone_zoo"),
    "jax": ("jax", "not slow and not backbone_zoo"),
    "jax-zoo": ("jax", "not slow and backbone_zoo"),
    "tensorflow": ("tensorflow", "not slow and not backbone_zoo"),
}
SLOW_RERUNS = ("torch-zoo", "jax-zoo")
TEST_NAME = "test_parity_suite_on_backend"
STARTED: dict[str, tuple[subprocess.Popen, Path, str]] = {}  # re-run name -> (process, output, marks)
_FOLDER: list[Path] = []


def reruns() -> list[str]:
    """The re-runs of the backends other than this process's."""
    return [name for name, (backend, _) in RERUNS.items() if backend in other_backends()]


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


def start_reruns(names) -> None:
    """Start the re-runs ``names`` (of :data:`RERUNS`) whose backend is installed, together (once)."""
    if STARTED or _FOLDER:
        return
    _FOLDER.append(Path(tempfile.mkdtemp(prefix="keras-odir-parity-")))
    for name in names:
        backend, marks = RERUNS[name]
        if importlib.util.find_spec(MODULES[backend]) is not None:
            STARTED[name] = _start(backend, marks, _FOLDER[0] / name)


def stop_reruns() -> None:
    """Kill the re-runs still running (a session cut short) and remove their folder."""
    for process, _, _ in STARTED.values():
        if process.poll() is None:
            process.kill()
            process.wait()
    for folder in _FOLDER:
        shutil.rmtree(folder, ignore_errors=True)
