"""One process per run folder: an advisory lock file ``run.lock`` naming its owner's PID and host.

The lock is an ``flock`` on the open file, so the operating system releases it when the owner dies however
it dies: a lock file left by a dead process is simply taken over. A live owner's lock is refused with one
line naming its PID and host. The file is removed when the owner releases the lock (the end of the run).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path

from odir_core.errors import InputError

LOCK_FILE = "run.lock"


class RunInUseError(InputError):
    """Another live process holds the run folder's lock (exit 2)."""


class RunLock:
    """The lock of ``run_dir`` once :meth:`acquire` has succeeded; :meth:`release` gives it up.

    Copied to another process (pickled), it is a lock that process does not hold: releasing it there does
    nothing."""

    def __init__(self, run_dir):
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def __reduce__(self):
        return RunLock, (self.path.parent,)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "RunLock":
        """Take the lock or raise :class:`RunInUseError`; writes the owner's PID and host into the file."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunInUseError(self._in_use_message()) from None
            except BaseException:
                os.close(fd)
                raise
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:  # the previous owner removed the file between our open and flock
                same = False
            if same:
                break
            os.close(fd)
        owner = {"pid": os.getpid(), "host": socket.gethostname()}
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(owner) + "\n").encode())
        self._fd = fd
        return self

    def _in_use_message(self) -> str:
        try:
            owner = json.loads(self.path.read_text(encoding="utf-8"))
            who = f"process {int(owner['pid'])} on {owner['host']}"
        except (OSError, ValueError, KeyError, TypeError):
            who = "another process"
        return (f"{self.path.parent}: the run is in use by {who} ({self.path}); wait for that process to end or "
                "stop it, then run the command again")

    def release(self) -> None:
        """Remove the lock file and give up the lock (a no-op when not held)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:  # a read-only or vanished folder: the lock ends with the file descriptor anyway
            pass
        os.close(self._fd)
        self._fd = None
