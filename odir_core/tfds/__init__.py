"""The python -m odir_core.tfds command (odir_core.data.tfds.cli)."""
