"""Atomic file and folder writes: write to a temporary name in the same folder, then os.replace/rename.

Temporaries are named ``.<name>.<random>.odir-tmp[<suffix>]``: hidden, and marked so that the ones a killed
process left behind can be told from anything else in the folder (:func:`remove_stale_temporaries` removes
those and nothing else).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path

from odir_core.errors import OutputExistsError

WEIGHTS_SUFFIX = ".weights.h5"  # Keras' weights-only files must end so
TEMP_MARK = ".odir-tmp"
_TEMPORARY = re.compile(r"\..+\.[A-Za-z0-9_]{8}" + re.escape(TEMP_MARK) + r"(\.[A-Za-z0-9_.]+)?")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed.

    The temporary name keeps the suffix so writers that infer the format from it (pandas, matplotlib,
    Keras' ``.weights.h5``) work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = WEIGHTS_SUFFIX if path.name.endswith(WEIGHTS_SUFFIX) else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:-len(suffix)] if suffix else path.name}.",
                               suffix=TEMP_MARK + suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file ordinary permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


@contextlib.contextmanager
def atomic_folder(path):
    """Yield a fresh temporary folder that becomes ``path`` at the end; refuses an existing ``path``.

    ``path`` must not exist (or be an empty folder): an output folder is never silently overwritten,
    and a run that fails half way leaves nothing under the final name.
    """
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise OutputExistsError(f"{path} already exists; choose another --out or remove it first")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TEMP_MARK, dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if path.is_dir():
            path.rmdir()  # empty, checked above
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def is_temporary(path) -> bool:
    """Whether ``path`` is named as this module names its temporaries."""
    return _TEMPORARY.fullmatch(Path(path).name) is not None


def remove_stale_temporaries(folder) -> list[Path]:
    """Remove the temporaries that interrupted atomic writes left in ``folder`` (files and folders named by
    this module, nothing else); the paths removed."""
    removed = []
    for path in Path(folder).glob(f".*{TEMP_MARK}*"):
        if not is_temporary(path) or path.is_symlink():
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed
