"""Where the shipped data (hardware profiles, decision trees) lives, in a checkout and in an installed wheel."""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent.parent


def data_dir(name: str) -> Path:
    """Return the folder of shipped data `name` (`hardware_profiles` or `rules`).

    A wheel carries it inside the package (`autoptq/_data/<name>`); a checkout or an editable install keeps it at the
    top level of the repository.
    """
    for candidate in (_PACKAGE_DIR / "_data" / name, _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"shipped data folder {name!r} not found next to {_PACKAGE_DIR}")
