"""The compute device of a run, chosen once for both trainers (framework-free: the caller says whether CUDA is there)."""

from __future__ import annotations

from odir_core.errors import InputError


class DeviceError(InputError):
    """A device option that cannot be used on this machine."""


def resolve_device(name: str, cuda_available: bool, local_rank: int | None = None) -> str:
    """The device string for ``--device name``: ``auto`` is CUDA when available, else the CPU.

    In a distributed run (``local_rank`` given) a CUDA run uses the GPU of its local rank, ``cuda:LOCAL_RANK``.
    """
    if name == "auto":
        name = "cuda" if cuda_available else "cpu"
    if name.startswith("cuda") and not cuda_available:
        raise DeviceError(f"--device {name}: no CUDA device is available; use --device cpu or auto")
    if local_rank is not None and name == "cuda":
        return f"cuda:{local_rank}"
    return name
