"""keras_odir.train on jax with two host devices: keras.distribution.DataParallel against one device."""

import os
import subprocess
import sys

import numpy as np
import pytest

from distributed_runs import TESTS
from odir_core.synthetic import generate
from training_runs import only_run


def test_data_parallel_over_two_devices_equals_one_for_a_fine_tuned_model(tmp_path):
    pytest.importorskip("jax")
    data = generate(tmp_path / "set", patients=20, size=40, seed=3)
    env = {**os.environ, "KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}
    proc = subprocess.run([sys.executable, str(TESTS / "jax_runs.py"), str(tmp_path), str(data),
                           "fine_tuned_small_step", "uneven"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "DataParallel over 2 devices" in proc.stdout
    # batches of 7 cannot be split in equal parts over 2 devices: one line, no run folder left
    assert "--batch-size 7 on 2 jax devices: a training batch of 7 patient(s)" in proc.stdout + proc.stderr
    assert not any((tmp_path / "uneven" / "frozen").iterdir())
    # read the checkpoints' weights without building the model: the .keras archive holds them as HDF5
    import h5py
    import zipfile

    def weights(root):
        with zipfile.ZipFile(only_run(root / "fine_tuned_small_step") / "last.keras") as archive:
            archive.extract("model.weights.h5", root)
        values = []
        with h5py.File(root / "model.weights.h5") as f:
            f.visititems(lambda name, item: values.append((name, item[()])) if isinstance(item, h5py.Dataset) else None)
        return dict(values)

    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert one.keys() == two.keys() and len(one) > 100
    # relative to each weight's scale (moving variances reach hundreds on random weights)
    worst = max(float(np.abs(one[k].astype(np.float64) - two[k]).max() / max(1.0, np.abs(one[k]).max())) for k in one)
    print(f"largest relative difference {worst:.2e}")
    assert worst <= 1e-5  # BatchNorm over the global batch under SPMD; only the summation order differs
