"""Test collection for the whole checkout: doctests run from the source modules that have any.

`--doctest-modules` would import every module of src/tuneloop, torch and transformers included (about 6 s more
on a 2-core box); a module without a `>>>` example has nothing to run, so it is not collected.
"""

from __future__ import annotations

from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "src"


def pytest_ignore_collect(collection_path: Path, config) -> bool | None:
    if collection_path.suffix == ".py" and SOURCE in collection_path.parents:
        return ">>> " not in collection_path.read_text(encoding="utf-8")
    return None
