"""Model hyperparameters: each model's ``Config`` (a frozen pydantic dataclass declared with
:data:`hyperparameters`), read from TOML and ``key=value`` overrides, and written back as TOML
(``configs/models/<name>.toml`` mirrors the defaults).

A model config file is flat: ``key = value`` lines naming fields of the model's ``Config``.
One validator (pydantic: strict types, an int is accepted for a float; unknown keys refused;
the field constraints) and one error format: :class:`ModelConfigError` naming the key.
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, ValidationError
from pydantic.dataclasses import dataclass

from realtime_erc.errors import UserError
from realtime_erc.models.registry import model_class
from realtime_erc.toml_writer import toml_value

hyperparameters = functools.partial(
    dataclass, frozen=True, config=ConfigDict(extra="forbid", strict=True)
)
"""Decorator of every model's ``Config``: a frozen pydantic dataclass (``dataclasses.asdict`` /
``replace`` keep working, and ``replace`` validates too), unknown keys refused, strict types."""

MODEL_CONFIG_DIR = Path(__file__).resolve().parent.parent.parent / "configs" / "models"


class ModelConfigError(UserError, ValueError):
    """A model configuration the user wrote that cannot be used."""


def default_config(name: str) -> Any:
    return model_class(name).Config()


def load_model_config(
    name: str,
    path: Path | str | None = None,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
) -> Any:
    """The ``Config`` of model ``name``: defaults < the TOML file ``path`` < ``overrides``
    (a mapping, or ``key=value`` strings with TOML values; bare words are strings)."""
    config = default_config(name)
    if path is not None:
        config = _apply(name, config, _read(Path(path)), str(path))
    if overrides:
        if not isinstance(overrides, Mapping):
            overrides = dict(parse_override(item) for item in overrides)
        config = _apply(name, config, dict(overrides), "overrides")
    return config


def config_from_dict(name: str, data: Mapping[str, Any], source: str = "checkpoint") -> Any:
    """A ``Config`` from a plain dict (a checkpoint's), checked like a file."""
    return _apply(name, default_config(name), dict(data), source)


def config_to_toml(name: str, config: Any | None = None) -> str:
    """TOML text of ``config`` (default: the model's defaults), with a header."""
    config = config if config is not None else default_config(name)
    lines = [
        f"# Hyperparameters of the {name!r} model; mirrors {type(config).__qualname__} in",
        f"# {model_class(name).__module__.replace('.', '/')}.py (defaults).",
        "# Every key is optional; unknown keys are refused.",
        "",
    ]
    lines += [f"{k} = {toml_value(v)}" for k, v in asdict(config).items()]
    return "\n".join(lines) + "\n"


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ModelConfigError(
            f"model config {path} does not exist: pass an existing file"
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise ModelConfigError(f"model config {path} is not valid TOML: {e}") from None


def parse_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ModelConfigError(f"model override {item!r}: expected key=value, e.g. hidden=256")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.strip(), value


def _apply(name: str, config: Any, data: dict[str, Any], source: str) -> Any:
    try:
        return type(config)(**{**asdict(config), **data})
    except ValidationError as e:
        raise ModelConfigError(_describe(name, config, data, source, e)) from None


def _describe(name: str, config: Any, data: dict[str, Any], source: str, e: ValidationError) -> str:
    """The first error, naming its key."""
    error = e.errors()[0]
    key = str(error["loc"][0]) if error["loc"] else "?"
    known = {f.name: f for f in fields(config)}
    if key not in known:
        return f"{source}: unknown key {key!r} for model {name!r} (known keys: {', '.join(known)})"
    default, value = getattr(config, key), data.get(key, getattr(config, key))
    if error["type"].endswith("_type"):
        return (
            f"{source}: {name}.{key} must be {type(default).__name__} (like the default "
            f"{default!r}), got {value!r}"
        )
    return f"{source}: {name}.{key}: {error['msg'][0].lower()}{error['msg'][1:]}, got {value!r}"
