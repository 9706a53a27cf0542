"""What a training epoch logs, one row per value: its history key, console label and format, TensorBoard
tag, and whether it is a column of the study's ``train_results.xlsx``.

A per-split row is recorded once per split as ``<split>_<key>`` (``train_final_score``,
``val_final_score``: the history.csv columns, and the study's xlsx columns where ``study``); an
unsplit row (``lr``, ``momentum``) as its key. ``score`` names the value that the row records in the
score set ``source`` of :data:`odir_core.scores.SCORE_SETS` (``study``: :func:`~odir_core.scores.study_metrics`,
``challenge``: :func:`~odir_core.scores.challenge_metrics`); the loss has none (the trainer computes it). ``console`` lists
the splits shown on the epoch line (None: an unsplit row's value). The order of the rows is the
order of the history.csv columns within a split, of the console fields and of the TensorBoard tags.
"""

from __future__ import annotations

from dataclasses import dataclass

SPLITS = ("train", "val")


@dataclass(frozen=True)
class Metric:
    """One logged value of an epoch (see the module docstring)."""

    key: str
    label: str
    fmt: str
    tag: str
    score: str | None = None
    source: str = "study"
    study: bool = False
    console: tuple[str | None, ...] = ()
    split: bool = True

    def column(self, split: str | None = None) -> str:
        """The history key of this value for ``split`` (an unsplit row: its key)."""
        return f"{split}_{self.key}" if self.split else self.key


METRICS = (
    Metric("loss", "loss", ".4f", "Loss", study=True, console=SPLITS),
    Metric("kappa", "kappa", ".3f", "Kappa", score="kappa", study=True, console=("val",)),
    Metric("f1", "F1", ".3f", "F1", score="f1", study=True, console=("val",)),
    Metric("auc", "AUC", ".3f", "AUC", score="auc", study=True, console=("val",)),
    Metric("final_score", "final", ".3f", "FINAL", score="final", study=True, console=("val",)),
    Metric("challenge_kappa", "challenge kappa", ".3f", "Challenge_Kappa", score="kappa", source="challenge"),
    Metric("challenge_f1", "challenge F1", ".3f", "Challenge_F1", score="f1", source="challenge"),
    Metric("challenge_auc", "challenge AUC", ".3f", "Challenge_AUC", score="auc", source="challenge"),
    Metric("challenge_final", "challenge final", ".3f", "Challenge_FINAL", score="final", source="challenge",
           console=("val",)),
    Metric("lr", "lr", ".3g", "lr", split=False, console=(None,)),
    Metric("momentum", "momentum", ".3g", "momentum", split=False, console=(None,)),
)
PER_SPLIT = tuple(m for m in METRICS if m.split)
UNSPLIT = tuple(m for m in METRICS if not m.split)
SCORES = tuple(m for m in METRICS if m.score)  # computed from a split's predictions
STUDY_COLUMNS = [m.column(split) for split in SPLITS for m in PER_SPLIT if m.study]
