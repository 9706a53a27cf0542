"""Command-line subprocesses for the tests, forked from a process that has already imported the frameworks.

Importing Keras and torch costs about 9 s of CPU per process on a 2-core machine, and the kill, resume and
security tests start dozens of trainer processes. ``run`` starts each as ``subprocess.run([sys.executable, ...])``
would (a process of its own: a SIGKILL kills it alone, the exit status is ``-N`` for signal N; its own
environment, working folder, ``sys.argv`` and ``sys.path``; output captured as text) but forks it from
multiprocessing's fork server, which imports ``PRELOAD`` once per test session and computes nothing (no framework
thread pool exists to be copied). Only the backend the fork server imported is served that way: a command whose
``KERAS_BACKEND`` differs runs as a plain subprocess.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
import weakref
from pathlib import Path

PRELOAD = ["keras_odir.train", "keras_odir.evaluate", "keras_odir.predict", "torch_odir.train", "torch_odir.evaluate",
           "odir_core.data.prepare"]
_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(PRELOAD)
_SERVED_BACKEND = os.environ.get("KERAS_BACKEND") or "torch"  # what the fork server (started from this env) imports


def run(args: list[str], *, env: dict | None = None, cwd=None, timeout: float | None = None
        ) -> subprocess.CompletedProcess:
    """``subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)`` for
    ``args = [sys.executable, "-m", MODULE | SCRIPT | "-c", CODE, *argv]``, forked from the warm server."""
    process = start(args, env=env, cwd=cwd)
    try:
        out, err = process.communicate(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    return subprocess.CompletedProcess(args, process.returncode, out, err)


def start(args: list[str], *, env: dict | None = None, cwd=None):
    """``subprocess.Popen(args, env=env, cwd=cwd, stdout=PIPE, stderr=PIPE, text=True)`` as far as the tests use
    it (``pid``, ``poll``, ``send_signal``, ``kill``, ``communicate``, ``returncode``), forked from the warm server
    when it serves ``env``'s backend."""
    env = dict(os.environ if env is None else env)
    if args[0] != sys.executable or (env.get("KERAS_BACKEND") or "torch") != _SERVED_BACKEND:
        return subprocess.Popen(args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return WarmProcess(args, env, cwd)


class WarmProcess:
    """A command forked from the warm server; its output is read when it has ended."""

    def __init__(self, args: list[str], env: dict, cwd):
        self.args = args
        folder = Path(tempfile.mkdtemp(prefix="warm-"))
        # removed once the output is read, or when this object goes (a process never waited for to the end)
        self._remove_folder = weakref.finalize(self, shutil.rmtree, folder, ignore_errors=True)
        self._out, self._err = folder / "stdout", folder / "stderr"
        self._process = _CONTEXT.Process(target=_main, args=(list(map(str, args[1:])), env, str(cwd or os.getcwd()),
                                                              _interpreter_path(), str(self._out), str(self._err)))
        self._process.start()
        self.pid = self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def send_signal(self, sig: int) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        """Wait for the end (``subprocess.TimeoutExpired`` after ``timeout`` s), then (stdout, stderr)."""
        self._process.join(timeout)
        out, err = _read(self._out), _read(self._err)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout, out, err)
        self._remove_folder()
        return out, err


@functools.cache
def _interpreter_path() -> list[str]:
    """``sys.path`` of a fresh interpreter without ``PYTHONPATH``, but its first entry (the script's folder)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", "import json, sys; print(json.dumps(sys.path[1:]))"], env=env,
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _main(argv: list[str], env: dict, cwd: str, interpreter_path: list[str], out: str, err: str) -> None:
    """In the forked child: become ``python *argv`` run in ``cwd`` with ``env``, output into ``out`` / ``err``."""
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    if env.get("OMP_NUM_THREADS", "").isdigit() and "torch" in sys.modules:  # OpenMP read it when torch loaded
        sys.modules["torch"].set_num_threads(int(env["OMP_NUM_THREADS"]))
    entry = {"-m": os.getcwd(), "-c": ""}.get(argv[0], os.path.dirname(os.path.realpath(argv[0])))
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:] = [entry, *paths, *interpreter_path]
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            sys.modules.pop(argv[1], None)  # run afresh as __main__, as `python -m` does (the package stays imported)
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        elif argv[0] == "-c":
            sys.argv = ["-c", *argv[2:]]
            exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__"})
        else:
            sys.argv = list(argv)
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit:
        raise  # multiprocessing exits with its code as Python does
    except KeyboardInterrupt:  # as Python: the traceback, then the default SIGINT death
        traceback.print_exc()
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException:  # noqa: BLE001  (as Python: the traceback on stderr, exit status 1)
        traceback.print_exc()
        raise SystemExit(1) from None
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
