"""Writing outputs safely: never over the input, never half-written, never into a directory by mistake."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from autoptq.errors import OutputError


def check_output_path(path: Path, protected: list[Path] | None = None, must_exist_parent: bool = True) -> Path:
    """Validate an output file path before any expensive work; return it resolved.

    Refuses a directory, a file where a folder of the path must be, a missing parent folder (unless the caller
    creates it), a folder that cannot be written, and any of the `protected` paths (the inputs: model, external
    data, profiles, rules, data files, and the files inside input folders).
    """
    resolved = path.resolve()
    if resolved.is_dir():
        raise OutputError(f"{path}: is a directory; give a file path for the output")
    _check_ancestors(path, resolved.parent)
    if must_exist_parent and not resolved.parent.is_dir():
        raise OutputError(f"{path}: folder {resolved.parent} does not exist")
    _refuse_inputs(path, resolved, protected or [])
    check_writable(path, resolved.parent)
    return resolved


def check_output_folder(folder: Path, entries: list[str], protected: list[Path]) -> Path:
    """Validate an output folder and the relative `entries` to be written in it, before any work; return it
    resolved. An existing file where the folder, or a folder of an entry, must go is refused."""
    resolved = folder.resolve()
    if resolved.exists() and not resolved.is_dir():
        raise OutputError(f"{folder}: exists and is not a directory")
    for entry in entries:
        check_output_path(resolved / entry, protected=protected, must_exist_parent=False)
    return resolved


def check_writable(path: Path, folder: Path) -> None:
    """Refuse early when the nearest existing folder of `folder` cannot take a new file (read-only, full)."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    try:
        with tempfile.TemporaryFile(prefix=".autoptq-probe-", dir=existing):
            pass
    except OSError as exc:
        raise OutputError(f"{path}: cannot write into {existing}: {exc.strerror or exc}") from exc


def _check_ancestors(path: Path, folder: Path) -> None:
    for ancestor in (folder, *folder.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                raise OutputError(f"{path}: {ancestor} is a file where a folder must go")
            return


def _refuse_inputs(path: Path, resolved: Path, protected: list[Path]) -> None:
    for other in protected:
        if not other.exists():
            continue
        if other.is_dir():
            if resolved.exists() and resolved.is_relative_to(other.resolve()):
                raise OutputError(f"{path}: refusing to overwrite a file of the input folder {other}")
        elif resolved == other.resolve() or (resolved.exists() and os.path.samefile(resolved, other)):
            kind = "model" if other.suffix == ".onnx" else "file"
            raise OutputError(f"{path}: refusing to overwrite the input {kind} {other}")


def stage_folder(folder: Path) -> Path:
    """A fresh hidden staging folder inside `folder` (same file system, so moving out of it is a rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".autoptq-staging-", dir=folder))


def commit_staged(staging: Path, folder: Path, files: list[str], last: str) -> None:
    """Move `files` and then `last` (the manifest) from `staging` into `folder`; a file of `files` this run did not
    produce (a `.tflite` for a model that stayed float) is removed from `folder`, so no stale copy stays behind.

    The old `last` is removed first: a run killed while moving leaves no manifest beside a mix of old and new
    files, so a manifest present always describes the files beside it.
    """
    (folder / last).unlink(missing_ok=True)
    for name in files:
        if not (staging / name).exists():
            (folder / name).unlink(missing_ok=True)
            continue
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / name, folder / name)
    os.replace(staging / last, folder / last)
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


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
