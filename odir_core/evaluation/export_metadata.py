"""What an exported model (ONNX, SavedModel, .pt2) carries besides its graph, as string key/value pairs, and the
rule its check right after export must pass (framework-free: the exporter writes it, the ONNX predictor reads it).

Keys (every value a string): ``odir.format`` (:data:`FORMAT_VERSION`), ``odir.config_toml`` (the run's training
config as TOML), ``odir.labels`` (JSON list of the labels, output order), ``odir.thresholds`` (JSON {label:
threshold}; only when a thresholds.json was beside the model), ``odir.trained_on`` (JSON provenance record,
``odir_core.model.provenance``; only when known), ``odir.architecture`` (JSON {"backbone", "head"}),
``odir.source`` (the file name it was exported from).
"""

from __future__ import annotations

import json

import numpy as np
import tomli_w

from odir_core.cli_config import ConfigError
from odir_core.errors import InputError
from odir_core.labels import LABELS
from odir_core.training.config import TrainConfig
from odir_core.training.config_files import from_dict

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

FORMAT_VERSION = "1"
FORMAT, CONFIG, LABELS_KEY, THRESHOLDS, TRAINED_ON, ARCHITECTURE, SOURCE = (
    "odir.format", "odir.config_toml", "odir.labels", "odir.thresholds", "odir.trained_on", "odir.architecture",
    "odir.source")
INPUTS = ("left", "right")  # float32 NHWC [batch, S, S, 3], normalised as the config says
OUTPUTS = ("probabilities", "logits")  # [batch, 8] each, labels in LABELS order

# The check of every export: the artefact's logits equal the source model's within this, relative to the
# largest logit (at least 1): max |diff| <= CHECK_TOLERANCE * max(1, max |logit|).
CHECK_TOLERANCE = 1e-4


class MetadataError(InputError):
    """An exported model whose metadata is missing or unreadable (one line naming the file)."""


def build(config: TrainConfig, *, backbone: str, head: str, source: str, thresholds=None,
          trained_on: dict | None = None) -> dict[str, str]:
    """The metadata of an export; ``thresholds``: (8,) array or None; ``trained_on``: provenance record or None."""
    meta = {
        FORMAT: FORMAT_VERSION,
        CONFIG: tomli_w.dumps(config.to_dict()),
        LABELS_KEY: json.dumps(list(LABELS)),
        ARCHITECTURE: json.dumps({"backbone": backbone, "head": head}),
        SOURCE: source,
    }
    if thresholds is not None:
        meta[THRESHOLDS] = json.dumps({label: float(t) for label, t in zip(LABELS, thresholds)})
    if trained_on:
        meta[TRAINED_ON] = json.dumps(trained_on)
    return meta


def _checked(meta: dict[str, str], path) -> dict[str, str]:
    if meta.get(FORMAT) != FORMAT_VERSION:
        raise MetadataError(f"{path}: not a keras_odir export (metadata {FORMAT} = {meta.get(FORMAT)!r}, expected "
                            f"{FORMAT_VERSION!r}); export it with python -m keras_odir.export")
    if json.loads(meta.get(LABELS_KEY, "null")) != list(LABELS):
        raise MetadataError(f"{path}: its labels {meta.get(LABELS_KEY)} are not {list(LABELS)}; export it again")
    return meta


def config(meta: dict[str, str], path) -> TrainConfig:
    """The training config an export records."""
    meta = _checked(meta, path)
    try:
        return from_dict(tomllib.loads(meta.get(CONFIG, "")), source=f"{path} ({CONFIG})")
    except (ConfigError, tomllib.TOMLDecodeError) as exc:
        raise MetadataError(f"{path}: its recorded training config cannot be used ({exc}); export it again") from None


def thresholds(meta: dict[str, str], path) -> np.ndarray | None:
    """The (8,) thresholds an export records, or None."""
    if THRESHOLDS not in meta:
        return None
    try:
        table = json.loads(meta[THRESHOLDS])
        return np.array([float(table[label]) for label in LABELS])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise MetadataError(f"{path}: its recorded thresholds {meta[THRESHOLDS]!r} are not {{label: threshold}}; "
                            "export it again") from None


def trained_on(meta: dict[str, str]) -> dict | None:
    """The provenance record an export holds, or None."""
    try:
        record = json.loads(meta.get(TRAINED_ON, "null"))
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and "data" in record else None


def tolerance(reference_logits) -> float:
    """The largest |logit| difference an export may show against ``reference_logits`` (:data:`CHECK_TOLERANCE`)."""
    return CHECK_TOLERANCE * max(1.0, float(np.max(np.abs(reference_logits))))
