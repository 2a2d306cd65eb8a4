"""Training configuration from a YAML file: the same keys as the CLI flags; flags given override it."""

from __future__ import annotations

import typing

import yaml

from .errors import BertclfError
from .estimator import TextClassifier

# Data-reading options a config may hold besides the estimator's hyperparameters.
DATA_KEYS = {"text_column": "text", "label_column": "label", "label_sep": "|", "drop_empty": False}


def known_keys() -> dict:
    """Every accepted key with its default value."""
    return {**TextClassifier.default_params(), **DATA_KEYS}


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


def _kind(key: str) -> type:
    """The type a key's value must have: the estimator's annotation (``float | None`` → float), else its default's."""
    hint = typing.get_type_hints(TextClassifier).get(key)
    if hint is None:
        return type(DATA_KEYS[key])
    return next((a for a in typing.get_args(hint) if a is not type(None)), hint)


def _coerce(key: str, value, source: str | None):
    """Give a value its key's type (YAML reads ``5e-5`` as a string, for one)."""
    kind = _kind(key)
    if value is None or type(value) is kind:
        return value
    try:
        if kind is bool:
            if str(value).lower() not in ("true", "yes", "1", "false", "no", "0"):
                raise ValueError
            return str(value).lower() in ("true", "yes", "1")
        if kind is int and float(value) != int(float(value)):
            raise ValueError
        return kind(float(value)) if kind in (int, float) else kind(value)
    except (TypeError, ValueError):
        where = f"{source}: " if source else ""
        raise BertclfError(f"{where}{key} = {value!r} is not a valid {kind.__name__}") from None
