"""TrainConfig: TOML + flags precedence, validation, --help, and the experiment files vs the study table."""

import csv
import dataclasses
import tomllib
from pathlib import Path

import pytest

from odir_core.training import config as cfg
from odir_core.training.config_files import load_config, save_config
from odir_core.training.config_flags import parse_args, recipe_summary
from odir_core.training.losses import loss_parameters
from odir_core.training.run import ResumeError, check_unchanged
from reference_data import STUDY_TABLE, require

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"


def test_flags_override_file_and_file_overrides_defaults(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('head = "v2"\nlr = 0.05\nepochs = 7\nfine_tune = true\n')
    conf = parse_args(["--config", str(path), "--lr", "0.2", "--no-fine-tune", "--dataset", "synthetic"])
    assert conf.head == "v2" and conf.epochs == 7  # from the file
    assert conf.lr == 0.2 and conf.fine_tune is False and conf.data == "synthetic"  # flags win
    assert conf.momentum == cfg.TrainConfig().momentum  # built-in default


def test_integer_in_toml_is_accepted_for_float_field(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("lr = 1\n")
    conf = load_config(path)
    assert conf.lr == 1.0 and isinstance(conf.lr, float)


@pytest.mark.parametrize(
    "text, words",
    [
        ("hed = 'v0'\n", ["unknown key", "hed"]),
        ("epochs = 'ten'\n", ["epochs", "expected int"]),
        ("head = 'v9'\n", ["head", "v0, v1, v2"]),
        ("image_size = 64\ncrop_size = 96\n", ["crop_size", "image_size"]),
        ("lr = [\n", ["not valid TOML"]),
        ("optimizer = 'adam'\n", ["optimizer", "sgd, adamw"]),
        ("layer_decay = 1.5\n", ["layer_decay", "(0, 1]"]),
        ("scheduler = 'warmup_cosine'\nepochs = 5\nwarmup_epochs = 5\n", ["warmup_epochs = 5", "below epochs"]),
        ("scheduler = 'warmup_cosine'\nlr = 0.01\nmin_lr = 0.1\n", ["min_lr", "must not exceed lr"]),
        ("schedule_step = 'step'\nscheduler = 'linear'\n", ["schedule_step", "--scheduler warmup_cosine"]),
        ("optimizer = 'adamw'\nscheduler = 'cyclic'\n", ["cycles the momentum", "--no-cycle-momentum"]),
        ("scheduler = 'cyclic'\nlayer_decay = 0.65\n", ["one learning rate", "--layer-decay"]),
        ("adamw_beta2 = 1.0\n", ["adamw_beta2", "[0, 1)"]),
    ],
)
def test_bad_config_names_key_and_file(tmp_path, text, words):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(cfg.ConfigError) as info:
        load_config(path)
    message = str(info.value)
    for word in words:
        assert word in message


def test_bad_flag_value_exits_with_usage(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--augment", "mixup"])
    assert "invalid choice" in capsys.readouterr().err


def test_help_explains_every_field(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    out = capsys.readouterr().out
    for f in dataclasses.fields(cfg.TrainConfig):
        flag = "--data" if f.name == "data" else "--" + f.name.replace("_", "-")
        assert flag in out, flag
    assert "--no-normalize" in out and "--config" in out


def test_saved_config_round_trips_through_toml(tmp_path):
    conf = cfg.TrainConfig(head="v1", crop_size=200, scheduler="cyclic", seed=3)
    path = save_config(conf, tmp_path / "config.toml")
    with open(path, "rb") as fh:
        raw = tomllib.load(fh)
    assert raw["head"] == "v1" and raw["crop_size"] == 200 and raw["scheduler"] == "cyclic"
    assert load_config(path) == conf
    assert [p.name for p in tmp_path.iterdir()] == ["config.toml"]  # no temporary left behind


def test_loss_flags_and_their_parameters(tmp_path):
    conf = parse_args(["--loss", "asl", "--asl-gamma-neg", "3", "--asl-clip", "0", "--weighted-loss"])
    assert (conf.loss, conf.asl_gamma_neg, conf.asl_gamma_pos, conf.asl_clip) == ("asl", 3.0, 0.0, 0.0)
    assert loss_parameters(conf) == {"gamma_neg": 3.0, "gamma_pos": 0.0, "clip": 0.0}
    assert "asymmetric loss (gamma_neg 3, gamma_pos 0, clip 0, class-weighted)" in recipe_summary(conf)
    conf = parse_args(["--loss", "focal", "--focal-alpha", "-1"])
    assert loss_parameters(conf) == {"gamma": 2.0, "alpha": -1.0}
    assert "plain BCE" in recipe_summary(cfg.TrainConfig()) and "weighted BCE" in recipe_summary(
        cfg.TrainConfig(weighted_loss=True))
    path = tmp_path / "before.toml"  # a run's config.toml from before the losses: plain BCE, as it trained
    path.write_text('head = "v1"\nweighted_loss = true\n')
    assert load_config(path).loss == "bce"


def test_resume_uses_the_run_config(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    save_config(cfg.TrainConfig(head="v2", epochs=9), run / "config.toml")
    conf = parse_args(["--resume", str(run), "--epochs", "12"])
    assert conf.head == "v2" and conf.epochs == 12 and conf.resume == str(run)
    with pytest.raises(SystemExit):
        parse_args(["--resume", str(tmp_path / "missing")])


def test_resume_may_change_how_it_runs_but_not_what_it_computes(tmp_path):
    """--compile, --device, --workers change how a resumed run executes and are allowed; a setting of the run is
    refused with the flags that may change named."""
    run = tmp_path / "run"
    run.mkdir()
    save_config(cfg.TrainConfig(head="v2", epochs=9), run / "config.toml")
    check_unchanged(run, parse_args(["--resume", str(run), "--compile", "--device", "cpu", "--workers", "2"]))
    with pytest.raises(ResumeError, match=r"--lr 0.5 differs .* \(only --epochs, --patience, --workers, --device, "
                                          r"--compile may change\)"):
        check_unchanged(run, parse_args(["--resume", str(run), "--lr", "0.5"]))


def test_scheduler_params_are_torch_keyword_names():
    torch = pytest.importorskip("torch")
    conf = cfg.TrainConfig(scheduler="cyclic")
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=conf.lr, momentum=conf.momentum)
    torch.optim.lr_scheduler.CyclicLR(opt, **conf.scheduler_params())
    conf = cfg.TrainConfig(scheduler="linear")
    torch.optim.lr_scheduler.LinearLR(opt, **conf.scheduler_params())


def test_warmup_cosine_schedule_per_epoch_or_per_step():
    conf = cfg.TrainConfig(scheduler="warmup_cosine", lr=0.01, epochs=10, warmup_epochs=2, min_lr=1e-5)
    assert conf.schedule(7).steps_per_epoch == 1  # per epoch by default: the steps do not matter
    per_step = conf.replace(schedule_step="step").schedule(7)
    assert (per_step.base_lr, per_step.epochs, per_step.warmup_epochs, per_step.min_lr, per_step.steps_per_epoch) == (
        0.01, 10, 2, 1e-5, 7)
    assert per_step.lr_at(7) == conf.schedule(7).lr_at(1)  # step 7 of 7 per epoch is epoch 1


def _study_rows():
    with open(require(STUDY_TABLE), newline="") as fh:
        return list(csv.DictReader(fh))


def test_experiment_files_match_the_study_table():
    rows = _study_rows()
    assert len(rows) == 16
    for row in rows:
        k = int(row["experiment"])
        conf = load_config(EXPERIMENTS / f"experiment_{k:02d}.toml")
        assert conf.image_size == int(row["images"].rsplit("_", 1)[1]), k
        assert conf.head == row["head"], k
        assert conf.fine_tune == (row["fine_tune"] == "1"), k
        assert conf.augment == row["augmentation"], k
        assert conf.crop_size == int(row["crop_size"]), k
        assert conf.weighted_loss == (row["weighted_loss"] == "1"), k
        assert conf.balanced_sampler == (row["balanced_sampler"] == "1"), k
        assert conf.lr == float(row["lr"]), k
        assert conf.scheduler == row["scheduler"], k
        assert conf.epochs == int(row["epochs"]) and conf.patience == int(row["patience"]), k
        assert conf.batch_size == int(row["batch_size"]), k
        assert conf.split == "study" and conf.weights == "imagenet", k
        # experiment 0 used plain resizing, the others the FOV/circle-cropped images
        assert (conf.data == "data/odir5k") == row["images"].startswith("fov_cc_fov"), k


def test_experiments_16_and_17_vary_experiment_15():
    base = load_config(EXPERIMENTS / "experiment_15.toml")
    e16 = load_config(EXPERIMENTS / "experiment_16.toml")
    e17 = load_config(EXPERIMENTS / "experiment_17.toml")
    assert e16 == base.replace(experiment="experiment_16", head="v2")
    assert e17 == base.replace(experiment="experiment_17", balanced_sampler=True)


def test_demo_config_is_the_default_and_small(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/odir5k here
    conf = parse_args([])
    assert conf == load_config(EXPERIMENTS / "demo.toml")
    assert conf.experiment == "demo" and conf.input_size <= 96 and conf.weights == "none"


def _prepared_odir(root: Path) -> None:
    """A prepared ODIR-5K-like folder at root/data/odir5k (synthetic images, the prepared layout)."""
    from odir_core.data.synthetic import generate

    generate(root / cfg.PREPARED_ODIR, patients=4, size=16, workers=1)


def test_prepared_odir_runs_the_study_best_recipe_and_says_so(tmp_path, monkeypatch):
    _prepared_odir(tmp_path)
    monkeypatch.chdir(tmp_path)
    lines = []
    conf = parse_args([], log=lines.append)
    assert conf == load_config(EXPERIMENTS / "experiment_15.toml")
    assert conf.image_size == 512 and conf.crop_size == 448 and conf.weights == "imagenet" and conf.epochs == 100
    assert len(lines) == 1 and lines[0].startswith(
        "Prepared ODIR-5K found in data/odir5k: running the study's best recipe (experiments/experiment_15.toml: "
        "512 px images cropped to 448, imagenet weights, fine-tuned")
    flagged = []
    assert parse_args(["--epochs", "3"], log=flagged.append).epochs == 3
    assert "experiment_15.toml with --epochs from the command line: " in flagged[0]


@pytest.mark.parametrize("argv", [["--data", "synthetic"], ["--config", str(EXPERIMENTS / "demo.toml")]])
def test_data_or_config_flag_keeps_the_demo_recipe_beside_a_prepared_odir(tmp_path, monkeypatch, argv):
    _prepared_odir(tmp_path)
    monkeypatch.chdir(tmp_path)
    lines = []
    conf = parse_args(argv, log=lines.append)
    assert conf == load_config(EXPERIMENTS / "demo.toml", **({"data": "synthetic"} if "--data" in argv else {}))
    assert lines == []


def test_without_prepared_odir_the_demo_is_the_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lines = []
    assert parse_args([], log=lines.append) == load_config(EXPERIMENTS / "demo.toml")
    assert lines == []


def _help_text(capsys, argv=("--help",)) -> str:
    with pytest.raises(SystemExit):
        parse_args(list(argv), prog="train", description="Train.")
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


@pytest.mark.parametrize("prepared", [False, True])
def test_help_shows_the_defaults_that_apply(tmp_path, monkeypatch, capsys, prepared):
    if prepared:
        _prepared_odir(tmp_path)
    monkeypatch.chdir(tmp_path)
    source = EXPERIMENTS / ("experiment_15.toml" if prepared else "demo.toml")
    with open(source, "rb") as fh:
        values = tomllib.load(fh)
    out = _help_text(capsys)
    assert f"so they come from experiments/{source.name}" in out
    for key in ("epochs", "image_size", "weights", "lr", "batch_size"):
        assert f"(default: {values[key]!r} from {source.name})" in out, key
    unset = next(f for f in dataclasses.fields(cfg.TrainConfig) if f.name not in values)
    assert f"(default: {unset.default!r})" in out  # a key the file does not set: the built-in value
    assert "built-in default" not in out


@pytest.mark.parametrize("module", ["keras_odir.train", "torch_odir.train"])
def test_training_cli_help_is_plain_text(capsys, module):
    import importlib

    with pytest.raises(SystemExit):
        importlib.import_module(module).main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "``" not in out and "Defaults: without --config" in out
    assert "--device" in out


def test_retfound_recipe_is_retfounds_fine_tuning():
    """experiments/retfound_vit_l.toml: RETFound's main_finetune.py settings (blr 5e-3 x batch 16 / 256, layer
    decay 0.65, weight decay 0.05, 10 warm-up epochs of 50, min_lr 1e-6, per-step schedule) on its backbone."""
    conf = load_config(EXPERIMENTS / "retfound_vit_l.toml")
    assert (conf.backbone, conf.optimizer, conf.scheduler, conf.schedule_step) == (
        "retfound", "adamw", "warmup_cosine", "step")
    assert conf.lr == pytest.approx(5e-3 * 16 / 256, rel=1e-12) and conf.batch_size == 16
    assert (conf.layer_decay, conf.weight_decay, conf.warmup_epochs, conf.epochs, conf.min_lr, conf.input_size) == (
        0.65, 0.05, 10, 50, 1e-6, 224)
