"""Runs for the jax data-parallel test, in a process of its own started with
``XLA_FLAGS=--xla_force_host_platform_device_count=2 KERAS_BACKEND=jax``:
``python tests/jax_runs.py OUT DATA RUN...``, each RUN one of ``one/JOB`` (train ``JOB`` of
``distributed_runs.JOBS`` into ``OUT/one/JOB`` on one of the host devices), ``two/JOB`` (into ``OUT/two/JOB`` with
``keras.distribution.DataParallel`` over both) and ``uneven`` (batches of 7 over the two devices, which must be
refused: exit code 2)."""

from __future__ import annotations

import sys
from pathlib import Path

import keras_odir.train as ktrain
from distributed_runs import job_args
from keras_odir import data_parallel


def main(out: str, data: str, *runs: str) -> int:
    every = data_parallel._jax_devices()
    assert len(every) == 2, every
    for run in runs:
        if run == "uneven":
            data_parallel._jax_devices = lambda: every
            assert ktrain.main(job_args("frozen", data, Path(out) / "uneven")) == 2
            continue
        devices, job = run.split("/")
        data_parallel._jax_devices = lambda: every[:{"one": 1, "two": 2}[devices]]
        assert ktrain.main(job_args(job, data, Path(out) / devices)) == 0
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
