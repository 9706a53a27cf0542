"""``--config FILE.toml`` for any argparse CLI: the file's keys are the CLI's options, flags override them."""

from __future__ import annotations

import argparse

from odir_core.training.config import ConfigError, read_toml

CONFIG_HELP = "TOML file whose keys are this command's options (with '_' for '-', e.g. tta = \"hflip\"); flags override it"


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--config FILE.toml`` to ``parser``."""
    parser.add_argument("--config", metavar="FILE.toml", help=CONFIG_HELP)


def parse_with_config(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse ``argv``; values from ``--config`` become defaults, so flags given on the command line win.

    Unknown keys and a missing or invalid file are parser errors naming the file and the valid keys.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if known.config:
        try:
            values = read_toml(known.config)
        except ConfigError as exc:
            parser.error(str(exc))
        actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
        unknown = sorted(set(values) - set(actions))
        if unknown:
            parser.error(f"{known.config}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(actions))}")
        for key, value in values.items():
            action = actions[key]
            if action.type is not None and not isinstance(value, action.type):
                parser.error(f"{known.config}: {key} = {value!r} must be a {action.type.__name__}")
            if action.choices is not None and value not in action.choices:
                parser.error(f"{known.config}: {key} = {value!r}; choose one of {', '.join(map(str, action.choices))}")
        parser.set_defaults(**values)
    return parser.parse_args(argv)
