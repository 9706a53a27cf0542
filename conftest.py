"""Setup shared by both test folders: the tests' scratch files on the machine's RAM disk where it has one.

Many tests train and save full-size models (a checkpoint of 45-100 MB, several per epoch) into their temporary
folders; written to a disk, those bytes cost a sixth of the trainer tests' time here (test_train_keras.py 82 s
against 69 s on tmpfs). When ``TMPDIR`` is not set and ``/dev/shm`` is a tmpfs with at least 8 GiB free, the
session (pytest's ``tmp_path`` folders, Python's ``tempfile`` in this process and, through ``TMPDIR``, in every
process the tests start) uses it; otherwise the system's temporary folder, as usual.

On a RAM disk the folders of module-scoped fixtures (the distributed tests' run folders alone hold 2 GB) would stay
in memory until the session ends: each module's are removed when it ends with every test passed (a failed module's
are kept, as pytest keeps a failed test's ``tmp_path``). Folders made once and read by several modules live under
``SESSION_FOLDER`` in pytest's base folder.
"""

import os
import shutil
import tempfile

import pytest

RAM_DISK = "/dev/shm"
SESSION_FOLDER = "session"  # tests/tiny_runs.py and tests/export_runs.py keep their shared models there
NEEDED_BYTES = 8 * 2**30


def _is_tmpfs(folder: str) -> bool:
    try:
        with open("/proc/mounts") as mounts:
            return any(fields[1] == folder and fields[2] == "tmpfs" for fields in map(str.split, mounts))
    except OSError:
        return False


def ram_disk() -> str | None:
    """``/dev/shm`` when the tests may put their scratch files there (see above), else None."""
    if os.environ.get("TMPDIR") or not _is_tmpfs(RAM_DISK) or not os.access(RAM_DISK, os.W_OK | os.X_OK):
        return None
    found = os.statvfs(RAM_DISK)
    return RAM_DISK if found.f_bavail * found.f_frsize >= NEEDED_BYTES else None


def pytest_configure(config):
    folder = ram_disk()
    if folder is not None:
        os.environ["TMPDIR"] = folder
        tempfile.tempdir = folder


@pytest.fixture(scope="module", autouse=True)
def _module_folders_removed(request, tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    before, failed = set(base.iterdir()), request.session.testsfailed
    yield
    if request.session.testsfailed == failed:
        for folder in set(base.iterdir()) - before:
            if folder.name != SESSION_FOLDER:
                shutil.rmtree(folder, ignore_errors=True)
