"""Shared pieces of the keras_odir.train and torch_odir.train end-to-end tests."""

from pathlib import Path


def tiny_train_args(data, run_dir, *extra) -> list[str]:
    """Flags for a fast run on a tiny set: ResNet50 (the study's), 32 px, batch 8, random weights, unweighted
    loss, no workers."""
    return ["--data", str(data), "--run-dir", str(run_dir), "--backbone", "resnet50", "--image-size", "32", "--batch-size", "8",
            "--weights", "none", "--no-weighted-loss", "--experiment", "t", "--workers", "0", *extra]


# ResNet-18 where what a test checks (resume, console, precision, losses) is the same for any network, at a third of
# ResNet-50's layers; the end-to-end CLI tests keep the study's ResNet-50
SMALL = ("--backbone", "resnet18")


def only_run(run_root: Path) -> Path:
    """The single run folder under ``run_root`` (fails when there are none or several)."""
    runs = sorted(p for p in run_root.iterdir() if p.is_dir())
    assert len(runs) == 1, runs
    return runs[0]
