"""A training configuration as a TOML file: read (unknown keys and wrong types refused by name), written
atomically (a run folder's ``config.toml``); the keys are the fields of :class:`~odir_core.training.config.TrainConfig`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import tomli_w

from odir_core.atomic import atomic_write_text
from odir_core.cli_config import ConfigError, read_toml
from odir_core.training.config import FIELDS, TrainConfig, field_type


def from_dict(values: dict[str, Any], source: str = "config") -> TrainConfig:
    """Build a TrainConfig from a dict, rejecting unknown keys and wrong types by name."""
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(FIELDS)}"
        )
    clean = {}
    for key, value in values.items():
        want = field_type(FIELDS[key])
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            try:
                value = float(value)
            except OverflowError:
                raise ConfigError(f"{source}: {key} = {value} is too large a number") from None
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise ConfigError(
                f"{source}: {key} = {value!r} is a {type(value).__name__}, expected {want.__name__}"
            )
        clean[key] = value
    return TrainConfig(**clean)


def load_config(path: str | os.PathLike, **overrides) -> TrainConfig:
    """Load a TOML config file (keys = TrainConfig fields), then apply ``overrides``."""
    values = read_toml(path)
    values.update(overrides)
    return from_dict(values, source=str(path))


def save_config(config: TrainConfig, path: str | os.PathLike) -> Path:
    """Write the resolved config as TOML, atomically."""
    return atomic_write_text(path, tomli_w.dumps(config.to_dict()))
