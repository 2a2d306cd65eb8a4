"""Training configuration from a YAML file: the same keys as the CLI flags; flags given override it."""

from __future__ import annotations

import dataclasses

import yaml

from .errors import BertclfError
from .estimator import TextClassifier

# Data-reading options a config may hold besides the estimator's hyperparameters.
DATA_KEYS = {"text_column": "text", "label_column": "label", "label_sep": "|", "drop_empty": False}


def known_keys() -> dict:
    """Every accepted key with its default value."""
    defaults = {f.name: f.default for f in dataclasses.fields(TextClassifier)}
    return {**defaults, **DATA_KEYS}


def load_yaml(path: str) -> dict:
    """Read a config file; keys may use dashes or underscores (``max-length`` or ``max_length``)."""
    try:
        with open(path, encoding="utf-8") as fh:
            loaded = yaml.safe_load(fh) or {}
    except FileNotFoundError:
        raise BertclfError(f"{path}: no such config file") from None
    except yaml.YAMLError as err:
        line = getattr(getattr(err, "problem_mark", None), "line", None)
        where = f" line {line + 1}" if line is not None else ""
        raise BertclfError(f"{path}{where}: invalid YAML; fix the syntax") from None
    if not isinstance(loaded, dict):
        raise BertclfError(f"{path}: expected a mapping of keys to values, e.g. 'epochs: 3'")
    config = {str(k).replace("-", "_"): v for k, v in loaded.items()}
    unknown = sorted(set(config) - set(known_keys()))
    if unknown:
        raise BertclfError(f"{path}: unknown key(s) {unknown}; known keys: {', '.join(sorted(known_keys()))}")
    return config


def merge(config_file: str | None, flags: dict) -> dict:
    """Defaults, then the config file, then the flags the user actually typed (not None)."""
    merged = known_keys()
    if config_file:
        merged.update(load_yaml(config_file))
    merged.update({k: v for k, v in flags.items() if v is not None and k in merged})
    return {key: _coerce(key, value, config_file) for key, value in merged.items()}


def _coerce(key: str, value, source: str | None):
    """Give a value the type of its default (YAML reads ``5e-5`` as a string, for one)."""
    default = known_keys()[key]
    if value is None or default is None or type(value) is type(default):
        return value
    try:
        if isinstance(default, bool):
            if str(value).lower() in ("true", "yes", "1", "false", "no", "0"):
                return str(value).lower() in ("true", "yes", "1")
            raise ValueError
        if isinstance(default, int) and float(value) != int(float(value)):
            raise ValueError
        return type(default)(float(value)) if isinstance(default, (int, float)) else type(default)(value)
    except (TypeError, ValueError):
        where = f"{source}: " if source else ""
        raise BertclfError(f"{where}{key} = {value!r} is not a valid {type(default).__name__}") from None
