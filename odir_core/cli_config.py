"""``--config FILE.toml`` for any argparse CLI: the file's keys are the CLI's options, flags override them."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from odir_core.errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class ConfigError(InputError):
    """A configuration file or value that cannot be used (message says which and how to fix)."""


def read_toml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a TOML file into a dict; one clear error naming the file when it is missing or invalid."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None

CONFIG_HELP = "TOML file whose keys are this command's options (with '_' for '-', e.g. tta = \"hflip\"); flags override it"


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--config FILE.toml`` to ``parser``."""
    parser.add_argument("--config", metavar="FILE.toml", help=CONFIG_HELP)


def parse_with_config(parser: argparse.ArgumentParser, argv=None,
                      options: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """Parse ``argv``; values from ``--config`` become defaults, so flags given on the command line win.

    ``options``: the parser whose options the file's keys are (a subcommand's; default ``parser``). Unknown keys
    and a missing or invalid file are parser errors naming the file and the valid keys.
    """
    options = options or parser
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if known.config:
        try:
            values = read_toml(known.config)
        except ConfigError as exc:
            options.error(str(exc))
        actions = {a.dest: a for a in options._actions if a.dest not in ("help", "config")}
        unknown = sorted(set(values) - set(actions))
        if unknown:
            options.error(f"{known.config}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(actions))}")
        given = {token.split("=", 1)[0] for token in (sys.argv[1:] if argv is None else argv) if token.startswith("-")}
        for key, value in list(values.items()):
            action = actions[key]
            if isinstance(action, argparse._AppendAction):  # a repeatable flag: one value or a list in the file
                value = values[key] = [value] if isinstance(value, str) else value
                if given & set(action.option_strings):  # on the command line: its values replace the file's
                    del values[key]
                    continue
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    options.error(f"{known.config}: {key} = {value!r} must be a string or a list of strings")
                continue
            if action.type is not None and not isinstance(value, action.type):
                options.error(f"{known.config}: {key} = {value!r} must be a {action.type.__name__}")
            if action.choices is not None and value not in action.choices:
                options.error(f"{known.config}: {key} = {value!r}; choose one of {', '.join(map(str, action.choices))}")
        options.set_defaults(**values)
    return parser.parse_args(argv)
