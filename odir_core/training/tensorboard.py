"""TensorBoard scalar logging without TensorFlow or torch (the ``tensorboard`` package's record format).

The layout is that of ``SummaryWriter.add_scalars(tag, {"train": a, "val": b}, step)``, which the
study used: one event file per series under ``<logdir>/<Tag>_<series>/``, all with the scalar tag
``<Tag>``, so TensorBoard draws train and val of a tag in one chart. Both trainers log the same tags,
those of :mod:`odir_core.metric_table` (per-split values as train/val pairs, ``lr`` and ``momentum``
as one series under their own name); the step is the epoch number counted from 1, as in the console
and ``history.csv``.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from pathlib import Path

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from odir_core.metric_table import PER_SPLIT, SPLITS, UNSPLIT

_file_numbers = itertools.count()


class _EventFile:
    """One event file, written in the calling thread. tensorboard's ``EventFileWriter`` goes through
    ``tf.io.gfile``, which imports TensorFlow when it is installed (seconds, and its log lines on
    the console of a torch run); the file name and records here are the same as its."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_file_numbers)}"
        self._records = RecordWriter(open(folder / name, "wb"))  # noqa: SIM115 (closed by close())
        self.add_event(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def add_event(self, event: event_pb2.Event) -> None:
        self._records.write(event.SerializeToString())

    def flush(self) -> None:
        self._records.flush()

    def close(self) -> None:
        self._records.close()


class ScalarWriter:
    """Writes grouped scalars (one event file per series) for TensorBoard."""

    def __init__(self, logdir):
        self.logdir = Path(logdir)
        self._writers: dict[str, _EventFile] = {}

    def _writer(self, name: str) -> _EventFile:
        if name not in self._writers:
            self._writers[name] = _EventFile(self.logdir / name)
        return self._writers[name]

    def add_scalar(self, tag: str, value: float, step: int, series: str | None = None) -> None:
        """Log ``value`` under ``tag`` at ``step``; ``series`` puts it in the ``<tag>_<series>`` group."""
        name = f"{tag}_{series}" if series else tag
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=float(value))])
        self._writer(name).add_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

    def add_scalars(self, tag: str, values: dict[str, float], step: int) -> None:
        """Log several series of one chart, e.g. ``add_scalars("Loss", {"train": .3, "val": .4}, 0)``."""
        for series, value in values.items():
            self.add_scalar(tag, value, step, series=series)

    def log_epoch(self, epoch: int, record: dict[str, float]) -> None:
        """Log one epoch's history record at step ``epoch`` (counted from 1): the per-split values as
        train/val pairs, then the learning rate and the momentum."""
        for metric in PER_SPLIT:
            pair = {s: record[metric.column(s)] for s in SPLITS if metric.column(s) in record}
            if pair:
                self.add_scalars(metric.tag, pair, epoch)
        for metric in UNSPLIT:
            if record.get(metric.key) is not None:
                self.add_scalar(metric.tag, record[metric.key], epoch)
        self.flush()

    def flush(self) -> None:
        """Write buffered events to disk."""
        for writer in self._writers.values():
            writer.flush()

    def close(self) -> None:
        """Flush and close every event file."""
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
