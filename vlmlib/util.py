"""Small utilities every floor uses, written once: atomic files, JSON-safe values, file hashes, layer
spans."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np


def atomic_write(path: str | os.PathLike, write: Callable, binary: bool = False) -> Path:
    """Call write(file) on a temporary file beside `path`, then rename it into place (mode 0644): a
    reader never sees half a file, and an interrupted write leaves only the old one. `write` may also
    take the temporary file's path: pass a function of one argument that accepts whichever it is given
    (`binary` opens the file in binary mode)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
        os.chmod(tmp, 0o644)  # readable like the files beside it (mkstemp makes it 0600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def json_safe(value):
    """JSON-safe copy: numpy and torch numbers become Python ones, NaN and infinities become null."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (np.integer,)):
        return int(value)
    return value


def write_json(path: str | os.PathLike, data, indent: int = 1) -> Path:
    """`data` as JSON (made JSON-safe), written atomically."""
    plain = json_safe(data)
    return atomic_write(path, lambda f: json.dump(plain, f, indent=indent, default=str))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def files_digest(paths: Iterable[Path], root: Path) -> str:
    """One hash over files' paths (relative to `root`) and contents: a code fingerprint."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def package_files(package_dir: Path, suffixes: tuple[str, ...] = (".py",)) -> list[Path]:
    """Every file of a package and its subpackages with one of `suffixes` (caches excluded)."""
    return sorted(
        p
        for p in Path(package_dir).rglob("*")
        if p.is_file() and p.suffix in suffixes and "__pycache__" not in p.parts
    )


def span(layers: Iterable[int]) -> str:
    """'2-4' for a contiguous group, '5' for one layer, '2,5,9' otherwise, 'none' for no layer."""
    layers = list(layers)
    if not layers:
        return "none"
    if len(layers) > 1 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(str(x) for x in layers)


__all__ = ["atomic_write", "json_safe", "write_json", "sha256_file", "files_digest", "package_files", "span"]
