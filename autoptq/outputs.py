"""Writing outputs safely: never over the input, never half-written, never into a directory by mistake."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from autoptq.errors import OutputError


def check_output_path(path: Path, protected: list[Path] | None = None, must_exist_parent: bool = True) -> Path:
    """Validate an output file path before any expensive work; return it resolved.

    Refuses a directory, a missing parent folder (unless the caller creates it), and any of the `protected` paths
    (the inputs and their external data).
    """
    resolved = path.resolve()
    if resolved.is_dir():
        raise OutputError(f"{path}: is a directory; give a file path for the output")
    if must_exist_parent and not resolved.parent.is_dir():
        raise OutputError(f"{path}: folder {resolved.parent} does not exist")
    for other in protected or []:
        if other.exists() and resolved == other.resolve():
            raise OutputError(f"{path}: refusing to overwrite the input model")
    return resolved


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write `data` to `path` through a temporary file in the same folder and an atomic rename."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    path = check_output_path(path)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
            stream.flush()
            os.fsync(stream.fileno())
        # mkstemp creates the file 0600; give it the mode a plain open() would (an existing file keeps its own).
        os.chmod(temp_name, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def _umask() -> int:
    # The only portable way to read the umask is to set it; restore it at once.
    current = os.umask(0o022)
    os.umask(current)
    return current
