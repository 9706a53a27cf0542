"""Run a trainer and kill it (SIGKILL, as a power cut or the OOM killer would) at a chosen point.

    python tests/crash_run.py keras|torch POINT [train flags]

POINT (epochs count from 1):
  none              no kill: the run as the trainer does it
  backup-weights    keras: while epoch 2's backup weights are written (a 96-byte partial file)
  backup-metadata   keras: after epoch 2's backup weights, before its metadata names them
  backup-state      torch: while epoch 2's backup/state.pth is written (half the bytes)
  last-checkpoint   both: while epoch 2's last.keras / last.pth is written (a partial file)
  first-backup      both: just before the first epoch's backup is written
  finish            both: after finished.json, before the backup is removed
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def kill() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def truncate_and_kill(path, size: int) -> None:
    """Leave ``path`` holding its first ``size`` bytes (a write cut short), then die."""
    path = Path(path)
    data = path.read_bytes() if path.exists() else b""
    path.write_bytes(data[:size])
    kill()


def keras_patches(point: str) -> None:
    import keras

    import keras_odir.callbacks as callbacks

    calls = {"backup": 0, "meta": 0, "last": 0}
    save_weights, save = keras.Model.save_weights, keras.Model.save
    write_text = callbacks.atomic_write_text

    def patched_save_weights(self, filepath, *args, **kwargs):
        save_weights(self, filepath, *args, **kwargs)
        if Path(filepath).name.startswith(".epoch-"):
            calls["backup"] += 1
            if point == "backup-weights" and calls["backup"] == 2:
                truncate_and_kill(filepath, 96)

    def patched_write_text(path, text):
        calls["meta"] += 1
        if point == "backup-metadata" and calls["meta"] == 2:
            kill()
        return write_text(path, text)

    def patched_save(self, filepath, *args, **kwargs):
        save(self, filepath, *args, **kwargs)
        if Path(filepath).name.startswith(".last."):
            calls["last"] += 1
            if point == "last-checkpoint" and calls["last"] == 2:
                truncate_and_kill(filepath, Path(filepath).stat().st_size // 2)

    def first_backup(self):
        kill()

    keras.Model.save_weights = patched_save_weights
    keras.Model.save = patched_save
    callbacks.atomic_write_text = patched_write_text
    if point == "first-backup":
        callbacks.AtomicBackupAndRestore._save_model = first_backup


def torch_patches(point: str) -> None:
    import torch

    import torch_odir.train as ttrain

    calls = {"state": 0, "last": 0}
    save = torch.save

    def patched_save(obj, path, *args, **kwargs):
        name = Path(path).name
        if point == "first-backup" and name.startswith(".state."):
            kill()
        save(obj, path, *args, **kwargs)
        for key, prefix, where in (("state", ".state.", "backup-state"), ("last", ".last.", "last-checkpoint")):
            if name.startswith(prefix):
                calls[key] += 1
                if point == where and calls[key] == 2:
                    truncate_and_kill(path, Path(path).stat().st_size // 2)

    ttrain.torch.save = patched_save


def finish_patch() -> None:
    import odir_core.training.run as run

    write_text = run.atomic_write_text

    def patched_write_text(path, text):
        write_text(path, text)
        if Path(path).name == run.FINISHED_FILE:
            kill()

    run.atomic_write_text = patched_write_text


def main() -> int:
    trainer, point, *flags = sys.argv[1:]
    if trainer == "keras":
        os.environ.setdefault("KERAS_BACKEND", "torch")
        import keras_odir.train as train

        keras_patches(point)
    else:
        import torch_odir.train as train

        torch_patches(point)
    if point == "finish":
        finish_patch()
    return train.main(flags)


if __name__ == "__main__":
    sys.exit(main())
