"""Class-balanced sampling of multi-label patients (the study's MultilabelBalancedRandomSampler).

The study sampled with ``MultilabelBalancedRandomSampler`` from
github.com/issamemari/pytorch-multilabel-balanced-sampler: each draw first picks a class, then a
random patient having that class. :class:`MultilabelBalancedSampler` keeps its three class
choices and its state across epochs, with three deliberate differences: a seeded
``numpy.random.Generator`` instead of the global RNG; ties for the least-sampled class are broken
uniformly (the original lists a new minimum twice, favouring it); and a class without positives
among ``indices`` is never chosen (the original fails on it).

It needs no framework: iterate it (``torch.utils.data.DataLoader(dataset, sampler=s)`` accepts any
iterable with ``__len__``) or call :meth:`MultilabelBalancedSampler.epoch` for a whole epoch's
indices at once (a ``keras.utils.PyDataset`` reorders its rows with it in ``on_epoch_end``).
"""

from __future__ import annotations

import numpy as np

from odir_core.errors import InputError
from odir_core.labels import LABELS

CLASS_CHOICES = ("least_sampled", "random", "cycle")


class SamplerError(InputError):
    """Labels, indices or options the sampler cannot use."""


def _label_matrix(labels) -> np.ndarray:
    if hasattr(labels, "columns") and set(LABELS) <= set(labels.columns):  # a DataFrame: its N..O columns
        labels = labels[list(LABELS)]
    try:
        arr = np.asarray(labels, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise SamplerError(f"labels are not numeric: {exc}") from None
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise SamplerError(f"labels must be a non-empty (n_patients, n_classes) 0/1 matrix, got shape {arr.shape}")
    bad = ~np.isin(arr, (0.0, 1.0))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise SamplerError(f"labels must hold only 0 and 1; row {row} column {col} is {float(arr[row, col])!r}")
    return arr.astype(bool)


def _index_array(indices, n: int) -> np.ndarray:
    if indices is None:
        return np.arange(n, dtype=np.int64)
    arr = np.asarray(indices)
    if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
        raise SamplerError(f"indices must be a non-empty 1-D sequence of integer row positions, got {arr.dtype} shape {arr.shape}")
    bad = (arr < 0) | (arr >= n)
    if bad.any():
        raise SamplerError(f"indices must lie in [0, {n}) (rows of labels); {int(bad.sum())} do not, e.g. {int(arr[bad][0])}")
    return arr.astype(np.int64)


class MultilabelBalancedSampler:
    """Yield ``len(indices)`` row positions per epoch, balancing the classes of a multi-label matrix.

    Parameters
    ----------
    labels : (n, k) 0/1 array (or DataFrame with the N..O columns) for the whole dataset.
    indices : the row positions that may be drawn (e.g. the training split); default all rows.
        Draws are values of ``indices``, i.e. positions in ``labels``.
    class_choice : how each draw picks its class before picking a random patient with it:
        ``"least_sampled"`` a class with the fewest samples so far (ties uniformly at random; every
        label of the drawn patient is counted), ``"random"`` uniformly, ``"cycle"`` in turn.
    seed : int, None or ``numpy.random.Generator``.

    ``counts[c]`` is how many drawn patients had class ``c`` so far (kept in every mode). Counts,
    the cycle position and the generator persist across epochs, as in the original.
    Classes with no positive patient among ``indices`` are never chosen (see ``empty_classes``);
    a patient with no positive label is never drawn.
    """

    def __init__(self, labels, indices=None, class_choice: str = "least_sampled", seed=None):
        if class_choice not in CLASS_CHOICES:
            raise SamplerError(f"class_choice must be one of {', '.join(CLASS_CHOICES)}, got {class_choice!r}")
        self.labels = _label_matrix(labels)
        self.indices = _index_array(indices, len(self.labels))
        self.class_choice = class_choice
        self.rng = np.random.default_rng(seed)
        positive = self.labels[self.indices]
        self.classes = np.flatnonzero(positive.any(axis=0))  # classes that can be chosen
        self.empty_classes = np.flatnonzero(~positive.any(axis=0))
        if self.classes.size == 0:
            raise SamplerError("no class has a positive patient among indices; nothing to balance")
        members = [self.indices[positive[:, c]] for c in self.classes]
        self._members = np.concatenate(members)  # patients of each choosable class, back to back
        self._sizes = np.array([m.size for m in members], dtype=np.int64)
        self._starts = np.concatenate(([0], np.cumsum(self._sizes)[:-1]))
        # the same as Python lists for the sequential least_sampled loop; a drawn patient's classes
        # are all choosable (it is one of indices), so its labels index `counts` directly
        self._member_lists = [m.tolist() for m in members]
        self._row_classes = {int(r): np.flatnonzero(self.labels[r]).tolist() for r in np.unique(self._members)}
        self.counts = np.zeros(self.labels.shape[1], dtype=np.int64)
        self._next_class = 0

    def __len__(self) -> int:
        return int(self.indices.size)

    def __iter__(self):
        return iter(self.epoch().tolist())

    def epoch(self) -> np.ndarray:
        """The next epoch's ``len(self)`` drawn row positions (int64); advances counts and generator."""
        n = len(self)
        m = self.classes.size
        if self.class_choice == "least_sampled":
            chosen = self._least_sampled(n)
        else:
            if self.class_choice == "random":
                picks = self.rng.integers(m, size=n)
            else:
                picks = (self._next_class + np.arange(n)) % m
                self._next_class = int((self._next_class + n) % m)
            offsets = (self.rng.random(n) * self._sizes[picks]).astype(np.int64)
            chosen = self._members[self._starts[picks] + offsets]
            self.counts += self.labels[chosen].sum(axis=0)
        return chosen

    def _least_sampled(self, n: int) -> np.ndarray:
        # Sequential by nature (each draw depends on the counts so far): a tight loop over Python
        # ints with the random numbers drawn in bulk up front.
        tie_draws = self.rng.random(n).tolist()
        patient_draws = self.rng.random(n).tolist()
        counts = self.counts.tolist()
        slots = list(enumerate(self.classes.tolist()))  # (position in member lists, class)
        members, row_classes = self._member_lists, self._row_classes
        chosen = [0] * n
        for i in range(n):
            low = min(counts[c] for _, c in slots)
            ties = [s for s, c in slots if counts[c] == low]
            group = members[ties[int(tie_draws[i] * len(ties))]]
            row = group[int(patient_draws[i] * len(group))]
            chosen[i] = row
            for c in row_classes[row]:
                counts[c] += 1
        self.counts = np.asarray(counts, dtype=np.int64)
        return np.asarray(chosen, dtype=np.int64)

    def state_dict(self) -> dict:
        """Counts, cycle position and generator state, to resume the same sequence after a restart."""
        return {"counts": self.counts.tolist(), "next_class": self._next_class, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned (same labels, indices and class_choice)."""
        counts = np.asarray(state["counts"], dtype=np.int64)
        if counts.shape != self.counts.shape:
            raise SamplerError(f"state has {counts.size} class counts, this sampler has {self.counts.size} classes")
        self.counts = counts
        self._next_class = int(state["next_class"])
        self.rng.bit_generator.state = state["rng"]
