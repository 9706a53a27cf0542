"""Configuration values and the backend name are checked where they are read: an experiment name is one folder
name (the run folder stays under --run-dir), every number is finite and in the range both trainers accept, and a
misspelt KERAS_BACKEND is one line before keras is imported. A bad value is exit 2 before anything is created."""

import importlib
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import pytest
import torch

from keras_odir.optimizers import TorchSGD
from odir_core.training import config as cfg
from odir_core.training.config_files import from_dict, load_config

REPO = Path(__file__).resolve().parents[1]
NAN, INF = math.nan, math.inf


def _refused(values: dict) -> str:
    """The ConfigError message for ``values`` (fails the test when they are accepted)."""
    with pytest.raises(cfg.ConfigError) as info:
        from_dict(values)
    return str(info.value)


def _accepted(**values) -> bool:
    try:
        from_dict(values)
    except cfg.ConfigError:
        return False
    return True


REFUSED_NAMES = ["../escaped", "/abs/x", "runs/x", "a\\b", "..", ".", "", "C:x", "tab\there", "nul\x00", "bell\x07",
                 "line\nbreak", "del\x7f"]
KEPT_NAMES = ["experiment_15", "demo", "my run (2)", "résumé.v1", "..x", "a.b"]


def test_experiment_name_is_one_folder_name():
    for name in REFUSED_NAMES:
        message = _refused({"experiment": name})
        assert message.startswith(f"experiment = {name!r}: "), message
        assert "--run-dir" in message and "\n" not in message
    assert [from_dict({"experiment": name}).experiment for name in KEPT_NAMES] == KEPT_NAMES


@pytest.mark.parametrize("key, value, message", [
    ("lr", NAN, "lr = nan: must be a finite number > 0"),
    ("lr", INF, "lr = inf: must be a finite number > 0"),
    ("lr", -INF, "lr = -inf: must be a finite number > 0"),
    ("weight_decay", -1e308, "weight_decay = -1e+308: must be a finite number >= 0"),
    ("weight_decay", INF, "weight_decay = inf: must be a finite number >= 0"),
    ("momentum", -3.0, "momentum = -3.0: must be a number in [0, 1]"),
    ("momentum", NAN, "momentum = nan: must be a number in [0, 1]"),
    ("linear_start_factor", 0.0, "linear_start_factor = 0.0: must be a number in (0, 1]"),
    ("linear_end_factor", 1.5, "linear_end_factor = 1.5: must be a number in [0, 1]"),
    ("linear_total_iters", -1, "linear_total_iters = -1: must be a whole number from 0 to 100000"),
    ("cyclic_base_lr", 0.0, "cyclic_base_lr = 0.0: must be a finite number > 0"),
    ("cyclic_max_lr", INF, "cyclic_max_lr = inf: must be a finite number > 0"),
    ("cyclic_step_size_up", 0, "cyclic_step_size_up = 0: must be a whole number from 1 to 100000"),
    ("cyclic_gamma", 0.0, "cyclic_gamma = 0.0: must be a number in (0, 1]"),
    ("cyclic_gamma", 2.0, "cyclic_gamma = 2.0: must be a number in (0, 1]"),
    ("cyclic_base_momentum", -0.1, "cyclic_base_momentum = -0.1: must be a number in [0, 1]"),
    ("cyclic_max_momentum", 1.5, "cyclic_max_momentum = 1.5: must be a number in [0, 1]"),
    ("epochs", 10**9, "epochs = 1000000000: must be a whole number from 1 to 100000"),
    ("patience", -1, "patience = -1: must be a whole number from 0 to 100000"),
    ("workers", -1, "workers = -1: must be a whole number from 0 to 256"),
    ("workers", 10**6, "workers = 1000000: must be a whole number from 0 to 256"),
    ("image_size", 10**6, "image_size = 1000000: must be a whole number from 1 to 4096"),
    ("crop_size", -1, "crop_size = -1: must be a whole number from 0 to 4096"),
    ("batch_size", 2**62, "batch_size = 4611686018427387904: must be a whole number from 1 to 65536"),
    ("demo_patients", 0, "demo_patients = 0: must be a whole number from 1 to 100000"),
    ("seed", -1, "seed = -1: must be a whole number from 0 to 4294967295"),
    ("seed", 2**40, "seed = 1099511627776: must be a whole number from 0 to 4294967295"),
    ("focal_gamma", -0.5, "focal_gamma = -0.5: must be a number in [0, 100]"),
    ("focal_gamma", INF, "focal_gamma = inf: must be a number in [0, 100]"),
    ("focal_alpha", 1.5, "focal_alpha = 1.5: must be a number in [0, 1] or -1"),
    ("focal_alpha", -0.5, "focal_alpha = -0.5: must be a number in [0, 1] or -1"),
    ("asl_gamma_neg", NAN, "asl_gamma_neg = nan: must be a number in [0, 100]"),
    ("asl_gamma_pos", 1e9, "asl_gamma_pos = 1000000000.0: must be a number in [0, 100]"),
    ("asl_clip", 1.0, "asl_clip = 1.0: must be a number in [0, 1)"),
    ("asl_clip", -0.01, "asl_clip = -0.01: must be a number in [0, 1)"),
])
def test_numbers_outside_their_range_are_refused_by_name(key, value, message):
    assert _refused({key: value}) == message


@pytest.mark.parametrize("values, message", [
    ({"cyclic_base_lr": 0.2, "cyclic_max_lr": 0.1}, "cyclic_base_lr = 0.2: must not exceed cyclic_max_lr (0.1)"),
    ({"cyclic_base_momentum": 0.95, "cyclic_max_momentum": 0.9},
     "cyclic_base_momentum = 0.95: must not exceed cyclic_max_momentum (0.9)"),
    ({"image_size": 64, "crop_size": 96}, "crop_size = 96: must not exceed image_size (64)"),
])
def test_lower_bound_above_upper_bound_is_refused(values, message):
    assert _refused(values) == message


def test_the_losses_take_their_edge_values():
    config = from_dict({"focal_alpha": -1, "focal_gamma": 0, "asl_clip": 0.0, "asl_gamma_neg": 100,
                        "asl_gamma_pos": 0.0})
    assert (config.loss, config.focal_alpha, config.asl_gamma_neg) == ("bce", -1.0, 100.0)
    assert from_dict({"focal_alpha": 1.0, "asl_clip": 0.999}).asl_clip == 0.999
    assert _refused({"loss": "dice"}) == "loss = 'dice': use one of bce, focal, asl"


def test_every_numeric_field_has_a_rule():
    numeric = {f.name for f in cfg.FIELDS.values() if type(f.default) in (int, float)}
    assert set(cfg.NUMBER_RULES) == numeric


def _keras_seed_ok(seed: int) -> bool:
    try:
        keras.utils.set_random_seed(seed)
    except ValueError:
        return False
    return True


def _torch_seed_ok(seed: int) -> bool:
    try:
        torch.manual_seed(seed)
    except RuntimeError:
        return False
    return True


def test_seed_range_is_what_keras_and_torch_both_accept():
    seeds = [-1, 0, 2**32 - 1, 2**32, 2**40]
    assert [_accepted(seed=s) for s in seeds] == [_keras_seed_ok(s) and _torch_seed_ok(s) for s in seeds]


def _torch_linear_ok(start: float, end: float) -> bool:
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    try:
        torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=start, end_factor=end, total_iters=0)
    except ValueError:
        return False
    return True


def test_linear_factors_are_what_torch_linear_lr_accepts():
    pairs = [(0.0, 0.1), (1e-9, 0.1), (1.0, 0.0), (1.5, 0.1), (1.0, 1.0), (1.0, -0.1), (1.0, 1.01)]
    assert [_accepted(linear_start_factor=start, linear_end_factor=end, linear_total_iters=0) for start, end in pairs] \
        == [_torch_linear_ok(start, end) for start, end in pairs]


def _sgd_ok(momentum: float, weight_decay: float) -> bool:
    """Whether both trainers' optimizers (torch SGD, keras_odir's TorchSGD) take these values."""
    try:
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=momentum, weight_decay=weight_decay)
        TorchSGD(learning_rate=0.1, momentum=momentum, weight_decay=weight_decay)
    except ValueError:
        return False
    return True


def test_sgd_values_are_what_both_trainers_accept():
    pairs = [(-3.0, 0.0), (0.0, 0.0), (1.0, 0.0), (3.0, 0.0), (0.9, -1e308), (0.9, 1e-4)]
    assert [_accepted(momentum=m, weight_decay=wd) for m, wd in pairs] == [_sgd_ok(m, wd) for m, wd in pairs]


def test_integer_too_large_for_a_float_key_names_file_and_key(tmp_path):
    path = tmp_path / "big.toml"
    path.write_text("lr = 1" + "0" * 400 + "\n")
    with pytest.raises(cfg.ConfigError, match=rf"^{re.escape(str(path))}: lr = 10+ is too large"):
        load_config(path)


@pytest.mark.parametrize("module", ["torch_odir.train", "keras_odir.train"])
@pytest.mark.parametrize("flags, config_text, key", [
    (["--experiment", "../escaped"], None, "experiment"),
    ([], 'experiment = "{root}/absolute"\n', "experiment"),
    (["--lr", "nan"], None, "lr"),
    ([], "lr = inf\n", "lr"),
    (["--seed", "-1"], None, "seed"),
    (["--seed", str(2**40)], None, "seed"),
    (["--momentum", "-3"], None, "momentum"),
    (["--weight-decay=-1e308"], None, "weight_decay"),
    (["--batch-size", str(2**62)], None, "batch_size"),
    (["--loss", "asl", "--asl-clip", "1"], None, "asl_clip"),
    ([], "loss = \"focal\"\nfocal_gamma = -1\n", "focal_gamma"),
])
def test_trainers_refuse_before_creating_anything(tmp_path, monkeypatch, capsys, module, flags, config_text, key):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "work"
    root.mkdir()
    argv = ["--data", "synthetic", "--demo-patients", "40", "--image-size", "32", "--epochs", "1",
            "--backbone", "resnet18", "--weights", "none", "--run-dir", str(root / "runs"), *flags]
    if config_text is not None:
        config = tmp_path / "bad.toml"
        config.write_text(config_text.format(root=root))
        argv += ["--config", str(config)]
    with pytest.raises(SystemExit) as info:
        importlib.import_module(module).main(argv)
    assert info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and f"error: {key} = " in lines[0], lines
    assert list(root.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["work"] + (["bad.toml"] if config_text else []))


def _keras_source_backends() -> set[str]:
    """The backend names keras' own backend module imports (``if backend() == "NAME"``)."""
    text = (Path(keras.__file__).parent / "src" / "backend" / "__init__.py").read_text()
    return set(re.findall(r'backend\(\) == "(\w+)"', text))


def test_backend_list_is_keras_own():
    import keras_odir

    assert set(keras_odir.KERAS_BACKENDS) == _keras_source_backends()


def _python(*args: str, backend: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env={**os.environ, "KERAS_BACKEND": backend, **env},
                          capture_output=True, text=True, timeout=300, cwd=REPO)


@pytest.mark.parametrize("tool", ["train", "evaluate", "predict", "convert"])
def test_misspelt_backend_is_one_line_from_each_keras_cli(tool):
    proc = _python("-m", f"keras_odir.{tool}", "--help", backend="pytorch")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "error: KERAS_BACKEND = 'pytorch' is not a Keras backend: set it to torch (the default when unset), jax, "
        "tensorflow, numpy or openvino"]


def test_misspelt_backend_from_an_installed_script():
    script = Path(sys.executable).with_name("keras-odir-train")
    if not script.is_file():
        pytest.skip(f"{script} is not installed (pip install -e .)")
    proc = subprocess.run([str(script), "--help"], env={**os.environ, "KERAS_BACKEND": "Torch"},
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("error: KERAS_BACKEND = 'Torch' is not a Keras backend")


def test_misspelt_backend_from_a_library_import_raises_the_same_message():
    proc = _python("-c", "import keras_odir", backend="jaxx")
    assert proc.returncode == 1 and "Unable to import backend" not in proc.stderr
    assert proc.stderr.splitlines()[-1].endswith(
        "KERAS_BACKEND = 'jaxx' is not a Keras backend: set it to torch (the default when unset), jax, tensorflow, "
        "numpy or openvino")
    probe = "import sys\ntry:\n    import keras_odir\nexcept ValueError:\n    print('keras' in sys.modules)"
    assert _python("-c", probe, backend="jaxx").stdout.split() == ["False"]  # refused before keras is imported


@pytest.mark.parametrize("environ, backend", [({}, "torch"), ({"KERAS_BACKEND": ""}, "torch"),
                                              ({"KERAS_BACKEND": "jax"}, "jax")])
def test_unset_or_empty_backend_means_the_default_torch(environ, backend):
    import keras_odir

    assert keras_odir.choose_backend(environ) == backend and environ == {"KERAS_BACKEND": backend}
