"""The one TOML writer: values and keys as TOML text (the standard library only reads TOML).

Used for ``realtime-erc config show`` and ``configs/default.toml``, the model hyperparameter
files and the fitted fusion file.
"""

from __future__ import annotations

from typing import Any


def toml_value(value: Any) -> str:
    """A value as TOML: tables inline, lists, booleans, numbers, escaped strings."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def toml_key(key: str) -> str:
    """A key, bare where TOML allows it, else quoted."""
    bare = key.replace("_", "").replace("-", "").isalnum() and key.isascii()
    return key if bare else toml_value(key)
