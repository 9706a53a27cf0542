"""Runs for the multi-process jax test, one per process of a jax job on this machine (one CPU device each):
``JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=I KERAS_BACKEND=jax
python tests/jax_processes.py OUT DATA JOB...`` trains each job (``distributed_runs.JOBS``) into ``OUT/<job>``
through ``keras_odir.train``; without those variables the same in one process. Each process writes
``OUT/process-<id>.json``: its exit codes, how many jax processes it saw and what it wrote under ``OUT``
(files opened for writing, folders made, files renamed or removed: Python's audit events)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import keras_odir.train as ktrain
from distributed_runs import job_args

WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def main(out: str, data: str, *jobs: str) -> int:
    root = os.path.realpath(out)
    writes: list[str] = []

    def under_out(path) -> bool:
        try:
            return os.path.realpath(os.fsdecode(path)).startswith(root + os.sep)
        except (TypeError, ValueError):
            return False

    def audit(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & WRITING)
            if writing and under_out(path):
                writes.append(f"open {path}")
        elif event in ("os.mkdir", "os.remove", "os.rmdir", "os.rename", "os.replace", "shutil.rmtree"):
            if under_out(args[0]):
                writes.append(f"{event} {args[0]}")

    sys.addaudithook(audit)
    codes = {job: ktrain.main(job_args(job, data, out)) for job in jobs}
    import jax

    report = {"codes": codes, "processes": jax.process_count(), "writes": list(writes)}  # before this report
    Path(out, f"process-{jax.process_index()}.json").write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
