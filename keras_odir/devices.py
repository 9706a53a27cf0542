"""``--device`` in keras_odir: honoured on Keras' torch backend (``keras.device``), refused on the others."""

from __future__ import annotations

import contextlib

import keras

from odir_core.training.devices import DeviceError, resolve_device


def chosen_device(name: str, local_rank: int | None = None) -> str | None:
    """The torch device ``--device name`` puts Keras on (``odir_core.training.devices``); None for ``auto`` (Keras'
    own choice). On the jax and tensorflow backends only ``auto`` is accepted: one line says what to use instead."""
    backend = keras.backend.backend()
    if backend != "torch":
        if name != "auto":
            raise DeviceError(f"--device {name}: the {backend} backend picks its own devices; leave --device auto "
                              "and choose them with CUDA_VISIBLE_DEVICES (empty for the CPU), or run on "
                              "KERAS_BACKEND=torch, which honours --device")
        return None
    if name == "auto":
        return None
    import torch

    return resolve_device(name, torch.cuda.is_available(), local_rank)


@contextlib.contextmanager
def on_device(name: str | None):
    """Keras' default device for the block: ``name`` from :func:`chosen_device` (None: Keras' own choice)."""
    if name is None:
        yield
        return
    with keras.device(name):
        yield
