"""One error story for every command-line tool: exit codes, the shared error base class and the runner.

Every CLI's ``main`` goes through :func:`run_cli`, which turns what went wrong into one line on stderr
and an exit code:

====  ==============================================================================================
0     success
1     failure: the job could not be done (an output write failed: disk full, read-only folder, a file
      where a folder is needed; training diverged)
2     bad input or usage (missing or unusable input files, bad flags, an output that already exists)
130   interrupted (Ctrl-C)
143   terminated (SIGTERM, as schedulers and ``docker stop`` send it): handled as Ctrl-C is
====  ==============================================================================================

Errors the tools raise on purpose derive from :class:`OdirError` and carry their exit code; any other
``ValueError`` or ``FileNotFoundError`` counts as bad input, any other ``OSError`` as a failure. Anything
else is a bug and keeps its traceback.

In a run of several processes (torchrun) an error is printed once (``run_cli``'s ``rank``). Rank 0 prints
every error as one process does. An error that every rank raises alike (marked by :func:`on_every_rank` around
what all read alike: flags, config, the starting weights, a resumed backup; or by its class's ``every_rank``:
options that cannot be split over the processes, a diverged run, a lost process) and Ctrl-C, which reaches
every process, leave the other ranks silent, with the same exit code. Any other error of another rank is its
own (an unreadable image in its slice) and printed as ``rank N: error: ...``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
from collections.abc import Callable, Iterator

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process SIGTERM ended


class OdirError(Exception):
    """Base of every error the tools report as one line; ``exit_code`` is the process exit status."""

    exit_code = EXIT_FAILURE
    every_rank = False  # raised by every process of a distributed run alike: rank 0 alone prints it


class InputError(OdirError, ValueError):
    """Bad input or usage (exit 2): the message names the file, row or flag and what to do."""

    exit_code = EXIT_USAGE


class OutputExistsError(InputError, FileExistsError):
    """An output that already exists and is never silently overwritten (exit 2)."""


class OutputError(OdirError):
    """Writing an output failed (exit 1): no space left, read-only or not writable, a file where a folder
    is needed. The job stops at once; what was finished stays on disk."""

    def __init__(self, message: str, errno_: int | None = None):
        super().__init__(message)
        self.errno = errno_


_HINTS = {
    errno.ENOSPC: "free some space or choose an output folder on another disk",
    errno.EDQUOT: "free some space or choose an output folder on another disk",
    errno.EROFS: "choose an output folder you can write to",
    errno.EACCES: "choose an output folder you can write to, or fix its permissions",
    errno.EPERM: "choose an output folder you can write to, or fix its permissions",
    errno.ENOTDIR: "part of the path is a file, not a folder: choose another output path",
    errno.EEXIST: "a file is in the way: choose another output path",
    errno.EISDIR: "a folder is in the way: choose another output path",
}


_WRITE_ONLY = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)  # errors only a write can cause


def describe_os_error(exc: OSError, hint: bool = False, path=None) -> str:
    """``FILE: reason`` for an OSError, on one line; with ``hint``, what to do about a failed write.

    ``path``: the output being written, named when the error has no file name (a full disk) or names a
    temporary file beside it.
    """
    reason = exc.strerror or str(exc) or type(exc).__name__
    where = os.fsdecode(exc.filename) if exc.filename else None
    if path is not None and (where is None or os.path.basename(where).startswith(".")):
        where = os.fsdecode(path)
    advice = _HINTS.get(exc.errno) if hint else None
    return (f"{where}: " if where else "") + reason + (f"; {advice}" if advice else "")


def output_error(exc: OSError, path=None) -> OutputError:
    """The :class:`OutputError` for an OSError raised while writing ``path`` (a file or folder)."""
    return OutputError(f"cannot write {describe_os_error(exc, hint=True, path=path)}", exc.errno)


def write_failure(exc: BaseException, path) -> OutputError | None:
    """The :class:`OutputError` naming ``path`` for an error only a write can cause (a full disk, a quota,
    a read-only filesystem), or None for any other exception."""
    if isinstance(exc, OSError) and not isinstance(exc, OdirError) and exc.errno in _WRITE_ONLY:
        return output_error(exc, path)
    return None


@contextlib.contextmanager
def writing(path=None) -> Iterator[None]:
    """Turn an OSError raised inside the block (a write of the output ``path``) into an :class:`OutputError`."""
    try:
        yield
    except OdirError:
        raise
    except OSError as exc:
        raise output_error(exc, path) from exc


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt, so that every clean-up that Ctrl-C
    runs runs for it too."""


def interrupt_exit_code(exc: KeyboardInterrupt) -> int:
    """The exit code of an interruption: 143 for SIGTERM, 130 for Ctrl-C."""
    return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED


def _raise_terminated(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def _handled(signum: int, handler) -> Iterator[None]:
    """``handler`` for signal ``signum`` within the block, the previous one restored after it (main thread
    only; a no-op elsewhere)."""
    try:
        previous = signal.signal(signum, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signum, previous)


def sigterm_as_interrupt():
    """Within the block SIGTERM raises :class:`Terminated` (main thread only; a no-op elsewhere)."""
    return _handled(signal.SIGTERM, _raise_terminated)


def worker_signals() -> None:
    """For worker-process initializers: leave Ctrl-C to the parent, which stops the pool (no worker tracebacks),
    and let SIGTERM (the pool's ``terminate``) end the worker at once. A forked worker inherits the parent's
    SIGTERM handler (:func:`sigterm_as_interrupt`), whose exception can be swallowed where Python ignores
    exceptions (a ``__del__``), leaving the worker alive and the pool's ``join`` waiting for ever."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def sigint_ignored():
    """Ignore Ctrl-C while worker processes start, so they inherit the ignored SIGINT even before their
    initializer runs; the parent's handler is restored afterwards (main thread only; a no-op elsewhere)."""
    return _handled(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def on_every_rank() -> Iterator[None]:
    """Mark an error raised in the block as one every process of a distributed run raises alike, because each
    runs the block on the same flags, config and files (the starting weights, a resumed backup): :func:`run_cli`
    prints it on rank 0 only."""
    try:
        yield
    except Exception as exc:
        exc.every_rank = True
        raise


def exit_code_for(exc: BaseException) -> int | None:
    """The exit code :func:`run_cli` gives ``exc``, or None for a bug (kept as a traceback)."""
    if isinstance(exc, KeyboardInterrupt):
        return interrupt_exit_code(exc)
    if isinstance(exc, OdirError):
        return exc.exit_code
    if isinstance(exc, (FileNotFoundError, ValueError)):
        return EXIT_USAGE
    if isinstance(exc, OSError):
        return EXIT_FAILURE
    return None


def error_message(exc: BaseException) -> str:
    """The one line for ``exc`` (without the ``error:`` prefix)."""
    if isinstance(exc, OSError) and not isinstance(exc, OdirError) and exc.strerror:
        if exc.errno in _WRITE_ONLY:
            return str(output_error(exc))
        return describe_os_error(exc)
    return str(exc) or type(exc).__name__


def run_cli(fn: Callable[..., int | None], *args, prefix: str = "error",
            interrupted: str = "interrupted", rank: int = 0, **kwargs) -> int:
    """Call a CLI's body ``fn(*args, **kwargs)`` and return the process exit code.

    Its return value (None counts as 0) is passed on; an error becomes one line ``PREFIX: message`` on
    stderr and exit code 2 (bad input or usage) or 1 (failure); Ctrl-C prints ``interrupted`` and gives 130,
    SIGTERM the same with 143.
    ``rank``: this process's rank in a distributed run; another than 0 prints only errors of its own, as
    ``rank N: PREFIX: message`` (see the module's docstring).
    """
    try:
        with sigterm_as_interrupt():
            code = fn(*args, **kwargs)
    except KeyboardInterrupt as exc:
        if not rank:
            print(f"\n{interrupted}", file=sys.stderr)
        return interrupt_exit_code(exc)
    except Exception as exc:
        code = exit_code_for(exc)
        if code is None:
            raise
        if rank and getattr(exc, "every_rank", False):
            return code
        print(f"{f'rank {rank}: ' if rank else ''}{prefix}: {error_message(exc)}", file=sys.stderr)
        return code
    return EXIT_OK if code is None else int(code)
