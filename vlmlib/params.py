"""Chapter parameters as people type them, checked with the parameter's name in every message.

The book runner (`python -m vlmlib run -p NAME=VALUE`) and a chapter's own setup cell (for a direct
papermill or Jupyter run) use the same functions, so a value means the same thing either way:

    n_samples = as_int(n_samples, "n_samples", minimum=1)       # "16" -> 16; "abc" -> ParameterError
    directions = as_list(directions, "directions")              # "early->mid,late->mid" -> [..., ...]
    dataset_dir = as_path("data/mine", "dataset")               # absolute, from the current directory

Command-line text is first read as a Python literal where it is one (`4`, `[1, 2]`, `{"a": [1]}`),
else kept as the plain string; `coerce` then turns it into the type the chapter's default has.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path


class ParameterError(ValueError):
    """A parameter value that cannot be used; the message names the parameter and what it expects."""


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def as_list(value, name: str) -> list:
    """A list from a list/tuple, or from text: "a,b" -> ["a", "b"], "a" -> ["a"] (never letter by letter)."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",")]
        if not all(items):
            raise ParameterError(f"parameter {name!r}: empty item in the comma-separated list {value!r}")
        return items
    raise ParameterError(f"parameter {name!r} should be a list (or comma-separated text), got {_show(value)}")


def as_names(value, name: str) -> list[str]:
    """Names given as a list (any iterable) or as text as users type them: "early->mid" is one name,
    "a,b" two; a library argument that takes several names reads a single string this way, never
    letter by letter."""
    if isinstance(value, str):
        return as_list(value, name)
    try:
        return list(value)
    except TypeError:
        raise ParameterError(
            f"{name!r} should be a list of names (or comma-separated text), got {_show(value)}"
        ) from None


def as_int(value, name: str, minimum: int | None = None) -> int:
    """An integer from an int or integer text; bools and non-integral floats are refused."""
    if isinstance(value, bool):
        raise ParameterError(f"parameter {name!r} should be an integer, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ParameterError(f"parameter {name!r} should be an integer, got {_show(value)}") from None
    if not isinstance(value, int):
        raise ParameterError(f"parameter {name!r} should be an integer, got {_show(value)}")
    if minimum is not None and value < minimum:
        raise ParameterError(f"parameter {name!r} should be at least {minimum}, got {value}")
    return value


def as_float(value, name: str, minimum: float | None = None) -> float:
    """A float from a number or numeric text."""
    if isinstance(value, bool):
        raise ParameterError(f"parameter {name!r} should be a number, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ParameterError(f"parameter {name!r} should be a number, got {_show(value)}") from None
    if not isinstance(value, (int, float)):
        raise ParameterError(f"parameter {name!r} should be a number, got {_show(value)}")
    if minimum is not None and value < minimum:
        raise ParameterError(f"parameter {name!r} should be at least {minimum}, got {value}")
    return float(value)


def as_path(value, name: str, must_exist: bool = True, base: str | os.PathLike | None = None) -> Path:
    """An absolute path: `~` expanded, a relative path taken from `base` (default: the current directory,
    which is the user's shell directory in a direct papermill run). A missing path names what was tried."""
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise ParameterError(f"parameter {name!r} should be a path, got {_show(value)}")
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = Path(base or os.getcwd()) / path
    path = Path(os.path.abspath(path))
    if must_exist and not path.exists():
        raise ParameterError(f"parameter {name!r}: {str(value)!r} does not exist (tried {path})")
    return path


def parse_text(text: str):
    """Command-line text -> a Python literal where it is one, else the text itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


TYPE_NAMES = {
    int: "an integer",
    float: "a number",
    str: "text",
    list: "a list",
    dict: "a dict",
    bool: "true/false",
}


def coerce(text_or_value, types: tuple[type, ...], name: str, minimum: float | None = None):
    """Turn what a user typed into one of `types` (those of the chapter's default, or its annotation).

    `types` empty means any value (a default of None without annotation)."""
    raw = text_or_value
    value = parse_text(raw) if isinstance(raw, str) else raw
    if not types:
        return value
    if type(None) in types and value is None:
        return None
    if dict in types and isinstance(value, dict):
        return value
    if list in types:
        if isinstance(value, (list, tuple)):
            return list(value)
        if str not in types and isinstance(raw, str):  # "a,b" or a single word -> a list of strings
            return as_list(raw, name)
    if bool in types and isinstance(value, bool):
        return value
    if int in types and float not in types and not (str in types and not isinstance(value, int)):
        return as_int(value, name, minimum)
    if float in types and not (str in types and not isinstance(value, (int, float))):
        return as_float(value, name, minimum)
    if str in types:
        # Text parameters keep exactly what was typed (`-p device=0` stays "0"); a quoted literal unquoted.
        if isinstance(value, str):
            return value
        if isinstance(raw, str):
            return raw
    wanted = " or ".join(TYPE_NAMES.get(t, getattr(t, "__name__", str(t))) for t in types)
    raise ParameterError(f"parameter {name!r} should be {wanted}, got {_show(raw)}")
