"""TensorBoard scalar logging without TensorFlow or torch (the ``tensorboard`` package's own event writer).

The layout is that of ``SummaryWriter.add_scalars(tag, {"train": a, "val": b}, step)``, which the
study used: one event file per series under ``<logdir>/<Tag>_<series>/``, all with the scalar tag
``<Tag>``, so TensorBoard draws train and val of a tag in one chart.
"""

from __future__ import annotations

import time
from pathlib import Path

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

# The study's chart tags and the history keys they show (train_<key> / val_<key>).
STUDY_TAGS = {"Loss": "loss", "Kappa": "kappa", "F1": "f1", "AUC": "auc", "FINAL": "final_score"}


class ScalarWriter:
    """Writes grouped scalars (one event file per series) for TensorBoard."""

    def __init__(self, logdir):
        self.logdir = Path(logdir)
        self._writers: dict[str, EventFileWriter] = {}

    def _writer(self, name: str) -> EventFileWriter:
        if name not in self._writers:
            self._writers[name] = EventFileWriter(str(self.logdir / name))
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
        """Log one epoch of history: the study's tags as train/val pairs, plus the learning rate."""
        for tag, key in STUDY_TAGS.items():
            pair = {s: record[f"{s}_{key}"] for s in ("train", "val") if f"{s}_{key}" in record}
            if pair:
                self.add_scalars(tag, pair, epoch)
        for key in ("lr", "momentum"):
            if record.get(key) is not None:
                self.add_scalar(key, record[key], epoch)
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
