"""Fixtures shared by the data tests: the real data folder and an isolated cache."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the data cache at a fresh folder, so no test reads or fills ~/.cache."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def shared_file() -> Callable[[str], Path]:
    """Return a function that resolves a path under the shared data folder, skipping if absent."""

    def resolve(relative: str) -> Path:
        path = SHARED_DATA / relative
        if not path.is_file():
            pytest.skip(f"real data file {relative} is not available")
        return path

    return resolve
