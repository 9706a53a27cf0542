"""keras_odir.train on jax: keras.distribution.DataParallel over the devices of two processes joined through
keras.distribution.initialize against one device, and over two host devices of one process (against one device
as a slow check: the same SPMD program as the two processes'; by default a batch that cannot be split is refused)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from distributed_runs import TESTS, free_port
from keras_odir.data_parallel import DistributedError, JaxJob, jax_job
from odir_core.data.synthetic import generate
from training_runs import keras_weights, only_run


def weights(root, job="fine_tuned_small_step"):
    """The weights of ``root/job``'s last.keras."""
    return keras_weights(only_run(root / job) / "last.keras")


def largest_difference(one, two) -> float:
    """The largest difference of two runs' weights, relative to each weight's scale (moving variances reach
    hundreds on random weights)."""
    assert one.keys() == two.keys() and len(one) > 100
    return max(float(np.abs(one[k].astype(np.float64) - two[k]).max() / max(1.0, np.abs(one[k]).max())) for k in one)


def _jax_env() -> dict[str, str]:
    """This environment without any jax job or device settings, on the jax backend's CPU devices."""
    base = {k: v for k, v in os.environ.items()
            if k not in ("XLA_FLAGS", "WORLD_SIZE", "RANK", "LOCAL_RANK") and not k.startswith(("JAX_", "KERAS_DIST"))}
    return {**base, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
            "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}


def _two_devices(root, data, *runs):
    """``tests/jax_runs.py``'s command and environment: ``runs`` in one process with two host devices."""
    return [TESTS / "jax_runs.py", root / "devices", data, *runs], \
        {**_jax_env(), "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}


def _run_together(launches: dict) -> dict[str, tuple[int, str]]:
    """Start every launch (name -> (python arguments, environment)) at once; each one's (exit code, output)."""
    procs = {name: subprocess.Popen([sys.executable, *map(str, args)], env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
             for name, (args, env) in launches.items()}
    results = {}
    try:
        for name, proc in procs.items():
            output = proc.communicate(timeout=600)[0]
            results[name] = (proc.returncode, output)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return results


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Started together, as they share the CPU: ``tests/jax_runs.py`` in one process with two host devices
    (``devices/one``: the fine-tuned job on one device, ``uneven``), and the two processes of one jax job on this
    machine (``two``: one CPU device each, gloo collectives). Returns the folder and each launch's (exit code,
    output)."""
    pytest.importorskip("jax")
    root = tmp_path_factory.mktemp("jax")
    data = generate(root / "set", patients=20, size=40, seed=3)
    address = f"127.0.0.1:{free_port()}"
    launches = {"devices": _two_devices(root, data, "one/fine_tuned_small_step", "uneven")}
    for rank in (0, 1):
        launches[f"process {rank}"] = ([TESTS / "jax_processes.py", root / "two", data, "fine_tuned_small_step"],
                                       {**_jax_env(), "JAX_COORDINATOR_ADDRESS": address, "JAX_NUM_PROCESSES": "2",
                                        "JAX_PROCESS_ID": str(rank)})
    return root, _run_together(launches)


def _succeeded(results, *names) -> None:
    for name in names:
        code, output = results[name]
        assert code == 0, f"{name}:\n{output[-4000:]}"


def test_batches_that_cannot_be_split_over_the_devices_are_refused(runs):
    root, results = runs
    _succeeded(results, "devices")
    # batches of 7 cannot be split in equal parts over 2 devices: one line, no run folder left
    assert "--batch-size 7 on 2 jax devices: a training batch of 7 patient(s)" in results["devices"][1]
    assert not any((root / "devices" / "uneven" / "frozen").iterdir())


@pytest.mark.slow  # DataParallel over two devices, here of one process, is tested over two processes below
def test_data_parallel_over_two_devices_equals_one_for_a_fine_tuned_model(tmp_path):
    pytest.importorskip("jax")
    data = generate(tmp_path / "set", patients=20, size=40, seed=3)
    results = _run_together({"devices": _two_devices(tmp_path, data, "one/fine_tuned_small_step",
                                                     "two/fine_tuned_small_step")})
    _succeeded(results, "devices")
    assert "DataParallel over 2 devices" in results["devices"][1]
    worst = largest_difference(weights(tmp_path / "devices" / "one"), weights(tmp_path / "devices" / "two"))
    print(f"largest relative difference {worst:.2e}")
    assert worst <= 1e-5  # BatchNorm over the global batch under SPMD; only the summation order differs


def test_two_jax_processes_train_as_one_device_and_only_process_0_writes(runs):
    """The two processes of one jax job train the fine-tuned model as one device does (``jax_runs.py``'s)."""
    root, results = runs
    _succeeded(results, "process 0", "process 1", "devices")
    reports = {rank: json.loads((root / "two" / f"process-{rank}.json").read_text()) for rank in (0, 1)}
    assert [r["codes"] for r in reports.values()] == [{"fine_tuned_small_step": 0}] * 2
    assert [r["processes"] for r in reports.values()] == [2, 2]
    assert "DataParallel over 2 devices of 2 processes" in results["process 0"][1]
    assert "Epoch 1/1" in results["process 0"][1] and "Epoch 1/1" not in results["process 1"][1]
    # process 1 wrote nothing (Python's audit events of files opened for writing, folders made, renames and
    # removals under its output folder); process 0 wrote the run folder, as one process does
    assert reports[1]["writes"] == [] and reports[0]["writes"]
    one = root / "devices" / "one" / "fine_tuned_small_step"
    assert {p.name for p in only_run(root / "two" / "fine_tuned_small_step").iterdir()} == \
        {p.name for p in only_run(one).iterdir()}
    worst = largest_difference(weights(root / "devices" / "one"), weights(root / "two"))
    print(f"largest relative difference, two jax processes against one device: {worst:.2e}")
    assert worst <= 1e-5  # one SPMD program over both processes; only the summation order differs


def test_the_environment_names_a_jax_job():
    job = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    assert jax_job(job) == JaxJob("10.0.0.1:1234", 4, 3)
    keras_names = {"KERAS_DISTRIBUTION_JOB_ADDRESSES": "h0:1", "KERAS_DISTRIBUTION_NUM_PROCESSES": "2",
                   "KERAS_DISTRIBUTION_PROCESS_ID": "1"}
    assert jax_job(keras_names) == JaxJob("h0:1", 2, 1)
    assert jax_job({**keras_names, **job}) == JaxJob("10.0.0.1:1234", 4, 3)  # jax's names first
    assert jax_job({}) is None and jax_job({"JAX_COORDINATOR_ADDRESS": "h:1"}) is None
    assert jax_job({**job, "JAX_NUM_PROCESSES": "1"}) is None
    assert jax_job({"WORLD_SIZE": "2", "RANK": "1"}) is None  # torchrun's: not a jax job
    for broken, message in [({**job, "JAX_PROCESS_ID": "4"}, "JAX_PROCESS_ID=4: must be 0 to 3"),
                            ({**job, "JAX_PROCESS_ID": ""}, "JAX_NUM_PROCESSES=4 needs JAX_COORDINATOR_ADDRESS"),
                            ({**job, "JAX_NUM_PROCESSES": "four"}, "JAX_NUM_PROCESSES='four': not a whole number")]:
        with pytest.raises(DistributedError, match=message):
            jax_job(broken)


def test_a_jax_job_is_joined_through_keras_distribution_initialize(monkeypatch):
    """``ranks()`` on jax calls ``keras.distribution.initialize`` with the job's coordinator, size and process id
    (recorded here, not run: jax joins a job once per process)."""
    jax = pytest.importorskip("jax")
    import keras

    from keras_odir import data_parallel

    calls = []
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: bool(calls))
    monkeypatch.setattr(keras.distribution, "initialize", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    for name, value in {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2",
                        "JAX_PROCESS_ID": "1"}.items():
        monkeypatch.setenv(name, value)
    assert data_parallel.ranks() == data_parallel.Ranks(1, 2)
    assert data_parallel.ranks() == data_parallel.Ranks(1, 2)  # a second run in the same process joins no more
    assert calls == [{"job_addresses": "10.0.0.1:1234", "num_processes": 2, "process_id": 1}]


def test_what_cannot_run_is_refused_with_one_line(monkeypatch):
    """torchrun's processes run keras_odir on the torch backend only; a jax job's variables need the jax backend."""
    import keras

    from keras_odir import data_parallel
    from odir_core.training.config import TrainConfig

    for name in ("JAX_NUM_PROCESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(DistributedError, match="under 2 torchrun processes runs on the torch backend only .* "
                                               "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID"):
        with data_parallel.processes(data_parallel.Ranks(1, 2), TrainConfig()):
            pass
    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    for name, value in {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(DistributedError, match="names a jax job of 2 processes .* KERAS_BACKEND=jax"):
        with data_parallel.processes(data_parallel.Ranks(), TrainConfig()):
            pass
