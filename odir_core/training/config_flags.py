"""The command line of the training CLIs: ``--config`` plus one flag per
:class:`~odir_core.training.config.TrainConfig` field, the config file a run starts from (``--config``,
``--resume``'s run folder, or the demo / the study's best recipe by default), and the line saying the best
recipe was chosen."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from odir_core.cli_config import ConfigError, read_toml
from odir_core.data.layouts import is_prepared
from odir_core.errors import EXIT_USAGE
from odir_core.training.config import FIELDS, PREPARED_ODIR, TrainConfig, field_type
from odir_core.training.config_files import from_dict, load_config
from odir_core.training.losses import loss_summary

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
# The embedded defaults of the training CLIs (no --config): the demo, or the study's best recipe when
# neither --data is given and a prepared ODIR-5K is found at PREPARED_ODIR.
DEFAULT_CONFIG = EXPERIMENTS / "demo.toml"
BEST_CONFIG = EXPERIMENTS / "experiment_15.toml"


def _flag(name: str) -> str:
    return FIELDS[name].metadata.get("flag", "--" + name.replace("_", "-"))


def default_config_file(data_given: bool = False) -> Path:
    """The config file a training CLI starts from without ``--config`` or ``--resume``: the study's best
    recipe (experiment_15.toml) when no data is given and PREPARED_ODIR holds a prepared ODIR-5K, else the demo."""
    return BEST_CONFIG if not data_given and is_prepared(PREPARED_ODIR) else DEFAULT_CONFIG


def recipe_summary(config: TrainConfig) -> str:
    """The settings of a recipe in a few words (image size, weights, training, schedule)."""
    crop = f" cropped to {config.crop_size}" if config.crop_size else ""
    return (f"{config.image_size} px images{crop}, {config.weights} weights, "
            f"{'fine-tuned' if config.fine_tune else 'frozen backbone'}, head {config.head}, augment {config.augment}, "
            f"{loss_summary(config)}, lr {config.lr:g} ({config.scheduler} schedule), "
            f"batch {config.batch_size}, up to {config.epochs} epochs (patience {config.patience})")


def best_recipe_banner(config: TrainConfig, flags=()) -> str:
    """The first line of a training run that found a prepared ODIR-5K and took the study's best recipe;
    ``flags``: the fields given on the command line."""
    changed = f" with {', '.join(_flag(name) for name in flags)} from the command line" if flags else ""
    return (f"Prepared ODIR-5K found in {PREPARED_ODIR}: running the study's best recipe "
            f"(experiments/{BEST_CONFIG.name}{changed}: {recipe_summary(config)}). "
            "Pass --config FILE for another recipe, or --data synthetic for the quick demo.")


def _defaults_text() -> tuple[str, dict[str, Any]]:
    """What --help says about the defaults, and the values of the config file that supplies them now."""
    path = default_config_file()
    try:
        values = read_toml(path)
    except ConfigError:
        values = {}
    found = (f"a prepared ODIR-5K is in {PREPARED_ODIR}, so they come from experiments/{BEST_CONFIG.name}"
             if path == BEST_CONFIG else f"no prepared ODIR-5K is in {PREPARED_ODIR}, so they come from "
             f"experiments/{DEFAULT_CONFIG.name}")
    text = (f"Defaults: without --config, experiments/{DEFAULT_CONFIG.name} (a few minutes on the synthetic demo "
            f"set), or experiments/{BEST_CONFIG.name} (the study's best recipe) when {PREPARED_ODIR} holds a prepared "
            f"ODIR-5K and --data is not given. Now {found}; the defaults shown below are those. "
            "Flags override the config file; --resume RUN_DIR starts from that run's config.toml.")
    return text, {"file": path, **values}


def build_parser(prog: str | None = None, description: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with ``--config`` plus one flag per TrainConfig field.

    Flags default to "not given" so that only the flags on the command line override the file. The help
    shows the defaults of the config file that applies without ``--config``.
    """
    defaults_text, defaults = _defaults_text()
    source = defaults.pop("file")
    parser = argparse.ArgumentParser(
        prog=prog,
        description=f"{description} {defaults_text}" if description else defaults_text,
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--config",
        metavar="FILE.toml",
        help=f"TOML file whose keys are the flags below with '_' (default: {source.name}, see above)",
    )
    for f in dataclasses.fields(TrainConfig):
        kind = field_type(f)
        if f.name in defaults:
            help_text = f.metadata["help"] + f" (default: {defaults[f.name]!r} from {source.name})"
        else:
            help_text = f.metadata["help"] + f" (default: {f.default!r})"
        names = [_flag(f.name)]
        if f.name == "data":
            names.append("--dataset")
        if kind is bool:
            parser.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(
                *names, dest=f.name, type=kind, choices=f.metadata.get("choices"),
                metavar=f.name.upper() if "choices" not in f.metadata else None, help=help_text,
            )
    return parser


def parse_args(argv=None, prog: str | None = None, description: str | None = None, log=None) -> TrainConfig:
    """Resolve the config of a training CLI: built-in defaults < config file < flags.

    With ``--resume RUN_DIR`` the base is that run's ``config.toml`` (``--config`` is then an error).
    With neither, :func:`default_config_file`: ``experiments/experiment_15.toml`` when no ``--data`` is
    given and ``data/odir5k`` holds a prepared ODIR-5K (``log`` gets a line saying so), else
    ``experiments/demo.toml``.
    """
    parser = build_parser(prog, description)
    args = vars(parser.parse_args(argv))
    config_path = args.pop("config", None)
    if args.get("resume"):
        if config_path:
            parser.error("--resume continues a run with its own config.toml; do not pass --config too")
        run_config = Path(args["resume"]) / "config.toml"
        if not run_config.is_file():
            parser.error(f"--resume {args['resume']}: no config.toml there; pass the run folder of an earlier run")
        config_path = run_config
    elif config_path is None:
        config_path = default_config_file(data_given=bool(args.get("data")))
        if not config_path.is_file():  # an installation without the experiments folder
            config_path = None
    try:
        config = from_dict(args, source="command line") if config_path is None else load_config(config_path, **args)
    except ConfigError as exc:
        parser.exit(EXIT_USAGE, f"{parser.prog}: error: {exc}\n")
    if config_path is BEST_CONFIG and log is not None:
        log(best_recipe_banner(config, sorted(args)))
    return config
