"""Prepare an ODIR-5K download for training: `python -m odir_core.prepare --source PATH --out DIR --size 512`.

PATH is a folder or zip in any layout (grand-challenge, Kaggle, OIA-ODIR, or a
prepared folder). Every photograph goes through FOV crop -> circle crop -> FOV
crop -> resize and is written to DIR/images/<ID>_left|right.<ext>; DIR also gets
annotations.xlsx (patients whose two images were written) and prepare_report.csv
(every image skipped or repaired, and why). An image that is corrupt (including a
JPEG damaged inside) or does not look like a colour fundus photograph (blank,
noise, an ordinary photo) is skipped with its patient and reported; pass
--keep-non-fundus to prepare the latter anyway. Reruns skip finished images.
DIR must lie outside PATH, and PATH must not be DIR/images (PATH is only read;
links to folders inside it are followed, each folder once). A
prepare_report.csv in DIR that prepare did not write is renamed aside
(prepare_report.csv.foreign-<time>), never deleted.
An error writing the output (disk full, read-only or not writable folder, a
file where a folder is needed) stops the job at once with one line and exit
code 1; the images written so far are kept and a rerun resumes.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
import zipfile
from pathlib import Path, PurePosixPath

import cv2
import pandas as pd
from tqdm import tqdm

from odir_core.atomic import atomic_write_text, remove_stale_temporaries
from odir_core.cli_help import DefaultsHelpFormatter
from odir_core.data.annotations import read_annotations, write_annotations
from odir_core.data.imageio import header_size, save_image
from odir_core.data.layouts import detect_layout
from odir_core.data.preprocess import NotFundusError, PreprocessError, prepare_image
from odir_core.errors import (
    InputError,
    OutputError,
    output_error,
    run_cli,
    sigint_ignored,
    writing,
)
from odir_core.errors import worker_signals
from odir_core.spreadsheets import quote_csv, unquote_csv

REPORT_COLUMNS = ["ID", "side", "source", "status", "reason"]
SIDES = (("left", "Left-Fundus"), ("right", "Right-Fundus"))
OUTPUT_FAILED = "output-error"  # a worker's status for a failed write: stops the job, never reported per image


class Source:
    """Read-only access to a dataset folder or zip by relative '/' paths."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(f"--source {self.path} does not exist; give an ODIR-5K folder or zip")
        self.is_zip = self.path.is_file()
        if self.is_zip and not zipfile.is_zipfile(self.path):
            raise InputError(f"--source {self.path} is a file but not a zip archive; give a folder or a .zip")
        self._zip: zipfile.ZipFile | None = None

    def names(self) -> list[str]:
        """Relative paths of every file."""
        if self.is_zip:
            return [n for n in self._archive().namelist() if not n.endswith("/")]
        return _files_under(self.path)

    def read(self, name: str) -> bytes:
        """The bytes of one file (a zip member is read without extracting the archive)."""
        if self.is_zip:
            return self._archive().read(name)
        return (self.path / name).read_bytes()

    def _archive(self) -> zipfile.ZipFile:
        if self._zip is None:  # opened lazily so each worker process gets its own handle
            self._zip = zipfile.ZipFile(self.path)
        return self._zip

    def __getstate__(self):
        return {**self.__dict__, "_zip": None}


def _files_under(root: Path) -> list[str]:
    """Relative '/' paths of the files under ``root``, following links to folders (an image folder on another
    disk) but entering each real folder once: a link back up the tree would make the walk endless."""
    seen, names = set(), []
    for folder, subfolders, files in os.walk(root, followlinks=True):
        info = os.stat(folder)
        if (info.st_dev, info.st_ino) in seen:
            subfolders.clear()
            continue
        seen.add((info.st_dev, info.st_ino))
        names += [(Path(folder) / f).relative_to(root).as_posix() for f in files]
    return names


_WORKER: dict = {}


def _init_worker(source: Source, size: int, tol: int, quality: int, keep_non_fundus: bool = False) -> None:
    cv2.setNumThreads(1)  # one image per process; avoid oversubscribing the cores
    _WORKER.update(source=source, size=size, tol=tol, quality=quality, keep_non_fundus=keep_non_fundus)


def _init_pool_worker(*init) -> None:
    worker_signals()  # Ctrl-C is the parent's to handle: it stops the pool, so workers print no tracebacks
    _init_worker(*init)


def _process(task: tuple[int, str, str, str]) -> tuple[int, str, str, str, str]:
    """Prepare one image; returns a report row (status ok / repaired / error), never raises.

    Only input-side problems are per-image errors; a failed write returns status OUTPUT_FAILED, which
    stops the job (see ``_run``).
    """
    pid, side, member, out_path = task
    notes: list[str] = []
    try:
        img = prepare_image(_WORKER["source"].read(member), _WORKER["size"], _WORKER["tol"], notes,
                            check_fundus=not _WORKER.get("keep_non_fundus", False))
    except NotFundusError as exc:
        return pid, side, member, "error", f"{exc} (--keep-non-fundus prepares it anyway)"
    except PreprocessError as exc:
        return pid, side, member, "error", str(exc)
    except Exception as exc:  # a batch job reports a bad file and goes on
        return pid, side, member, "error", f"{type(exc).__name__}: {exc}"
    try:
        save_image(img, out_path, _WORKER["quality"])
    except OSError as exc:  # disk full, read-only, not writable: no later image can do better
        return pid, side, member, OUTPUT_FAILED, str(output_error(exc, out_path))
    return pid, side, member, "repaired" if notes else "ok", "; ".join(notes)


def _image_index(names: list[str], folder: str) -> dict[str, str]:
    """Lower-case file name -> member path, for files directly inside ``folder``."""
    folder = folder.lower()
    index = {}
    for name in names:
        p = PurePosixPath(name)
        if str(p.parent).lower() == folder:
            index.setdefault(p.name.lower(), name)
    return index


def _read_source_annotations(source: Source, name: str, exclude_special: bool, id_bits: int = 64) -> pd.DataFrame:
    if not source.is_zip:
        return read_annotations(source.path / name, exclude_special=exclude_special, id_bits=id_bits)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / PurePosixPath(name).name
        local.write_bytes(source.read(name))
        return read_annotations(local, exclude_special=exclude_special, id_bits=id_bits)


def _run(tasks: list, source: Source, args) -> list[tuple]:
    rows = []
    init = (source, args.size, args.tol, args.quality, getattr(args, "keep_non_fundus", False))
    bar = tqdm(total=len(tasks), unit="img", desc="prepare", disable=not tasks)
    if args.workers <= 1 or len(tasks) <= 1:
        _init_worker(*init)
        results = map(_process, tasks)
        pool = None
    else:
        # spawn, not fork: a forked child can inherit OpenCV's thread-pool locks held and hang
        with sigint_ignored():  # the workers start with Ctrl-C ignored, even before _init_pool_worker runs
            pool = multiprocessing.get_context("spawn").Pool(args.workers, _init_pool_worker, init)
        chunk = max(1, min(16, len(tasks) // (args.workers * 8)))
        results = pool.imap_unordered(_process, tasks, chunksize=chunk)
    try:
        for row in results:
            if row[3] == OUTPUT_FAILED:
                raise OutputError(f"{row[4]}. Stopped; the images written so far are kept and a rerun resumes")
            rows.append(row)
            bar.update()
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    return rows


def _check_size(existing: Path, size: int) -> None:
    """Refuse to resume into a folder prepared at another size."""
    found = header_size(existing.read_bytes())
    if found != (size, size):
        raise InputError(
            f"{existing.parent.parent} holds {found[0]}x{found[1]} images (e.g. {existing.name}), not {size}x{size}; "
            "use another --out or the same --size"
        )


def _check_out(source: Path, out: Path) -> None:
    """Refuse an --out that is the source or inside it, or whose image folder is the source: prepare only
    reads its source (links resolved). An --out that holds the source in another folder is fine."""
    src, dst = source.resolve(), out.resolve()
    if dst == src or src in dst.parents:
        raise InputError(f"--out {out} is --source {source} or a folder inside it; prepare never writes into its "
                         "source: choose an --out outside it")
    if src == dst / "images":
        raise InputError(f"--out {out} would write its images into --source {source}; choose another --out")


def _previous_report(path: Path) -> pd.DataFrame:
    """The report of an earlier run into this --out. Any other file of that name (another tool's, damaged) is
    renamed aside, never deleted, and said so; the new report then starts empty."""
    if not path.exists():
        return pd.DataFrame(columns=REPORT_COLUMNS)
    try:
        old = unquote_csv(pd.read_csv(path))
        if list(old.columns) != REPORT_COLUMNS:
            problem = f"its columns are {list(old.columns)}, not {REPORT_COLUMNS}"
        elif len(old) and not pd.api.types.is_integer_dtype(old["ID"]):
            problem = "its ID column holds other values than patient IDs"
        else:
            return old
    except (OSError, ValueError) as exc:  # a folder, unreadable, not csv
        problem = f"it cannot be read as csv ({type(exc).__name__})"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside, n = path.with_name(f"{path.name}.foreign-{stamp}"), 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.foreign-{stamp}-{n}")
    with writing(aside):
        path.rename(aside)
    print(f"{path} is not a report of prepare ({problem}): renamed to {aside.name}; a new report is written")
    return pd.DataFrame(columns=REPORT_COLUMNS)


def prepare(args) -> int:
    """Run the whole preparation; returns the process exit status."""
    source = Source(args.source)
    out = Path(args.out)
    _check_out(source.path, out)
    names = source.names()
    found = detect_layout(names)
    print(f"found the {found.layout.name} layout in {source.path}: {found.annotations} + {found.images}/")
    df = _read_source_annotations(source, found.annotations, args.exclude_special)
    index = _image_index(names, found.images)

    images = out / "images"
    with writing(out):
        images.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(images)  # of an interrupted run; a user's own dot-files stay
    ext = "jpg" if args.format == "jpg" else "png"
    report_path = out / "prepare_report.csv"
    old = _previous_report(report_path)

    tasks, rows, checked = [], [], False
    for pid, *files in df[["ID", "Left-Fundus", "Right-Fundus"]].itertuples(index=False):
        for (side, _), fname in zip(SIDES, files):
            target = images / f"{pid}_{side}.{ext}"
            if target.exists():
                if not checked:
                    _check_size(target, args.size)
                    checked = True
                continue
            member = index.get(str(fname).lower())
            if member is None:
                rows.append((pid, side, str(fname), "error", f"missing: no {fname} in {found.images}/"))
            else:
                tasks.append((int(pid), side, member, str(target)))
    done = 2 * len(df) - len(tasks) - len(rows)
    print(f"{len(df)} patients: {done} images already prepared, {len(tasks)} to prepare, {len(rows)} missing")
    stopped = True  # an exception (output error, Ctrl-C) is on its way: the report is best effort
    try:
        rows += _run(tasks, source, args)
        stopped = False
    finally:
        new = pd.DataFrame([r for r in rows if r[3] != "ok"], columns=REPORT_COLUMNS)
        redone = set(zip(new["ID"], new["side"])) | {(t[0], t[1]) for t in tasks}
        keep = old[[(i, s) not in redone for i, s in zip(old["ID"], old["side"])]]
        report = pd.concat([keep, new], ignore_index=True).sort_values(["ID", "side"], kind="stable")
        try:
            with writing(report_path):
                atomic_write_text(report_path, quote_csv(report).to_csv(index=False))
        except OutputError:
            if not stopped:
                raise  # else the first error is the one to report (a full disk fails both)

    written = {(pid, side) for pid in df["ID"] for side, _ in SIDES if (images / f"{pid}_{side}.{ext}").exists()}
    complete = [all((pid, side) in written for side, _ in SIDES) for pid in df["ID"]]
    kept = df[complete].reset_index(drop=True)
    for side, column in SIDES:
        kept[column] = [f"{pid}_{side}.{ext}" for pid in kept["ID"]]
    with writing(out / "annotations.xlsx"):
        write_annotations(kept, out / "annotations.xlsx")
    errors = int((report["status"] == "error").sum())
    repaired = int((report["status"] == "repaired").sum())
    print(
        f"{len(kept)} of {len(df)} patients written to {out}; {errors} image(s) skipped and "
        f"{repaired} repaired (see {report_path})"
    )
    return 0 if len(kept) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m odir_core.prepare",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("--source", required=True, metavar="PATH", help="ODIR-5K folder or .zip (any known layout; detected)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created; an existing one is resumed)")
    parser.add_argument("--size", type=int, default=512, help="side of the square output images, in pixels")
    parser.add_argument("--format", choices=("png", "jpg"), default="png", help="output image format")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality 1-100 (with --format jpg)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel processes")
    parser.add_argument("--tol", type=int, default=7, help="grayscale level above which a pixel is fundus, not background")
    parser.add_argument(
        "--exclude-special",
        action="store_true",
        help="leave out patients with one of the 16 hospital-preprocessed (white-surround) images",
    )
    parser.add_argument(
        "--keep-non-fundus",
        action="store_true",
        help="prepare images that fail the fundus check (no dark surround around a round field of view, or not "
        "red/orange; see odir_core.data.preprocess.fundus_problems) instead of skipping their patient; they are "
        "listed in the report as repaired, with the reason",
    )
    return parser


def main(argv=None) -> int:
    """Command-line entry point."""
    args = build_parser().parse_args(argv)
    if args.size < 8 or not 1 <= args.quality <= 100:
        build_parser().error("--size must be >= 8 and --quality within 1..100")
    return run_cli(prepare, args, interrupted="interrupted; the images written so far are kept and a rerun resumes")
