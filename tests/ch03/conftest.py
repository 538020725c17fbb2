"""Fixtures for the chapter-3 tests: the book's p1ch3 files and a CUDA device."""
from pathlib import Path

import pytest

from common.data import REPO_ROOT, data_root


@pytest.fixture
def p1ch3_root():
    """A data root holding p1ch3/ourpoints.{t,hdf5}: $DLWPT_DATA or data/, else ../shared."""
    needed = ("p1ch3/ourpoints.t", "p1ch3/ourpoints.hdf5")
    for root in (data_root(), REPO_ROOT.parent / "shared" / "dlwpt-data"):
        if all((Path(root) / rel).exists() for rel in needed):
            return Path(root)
    pytest.skip("the book's p1ch3/ourpoints files are absent: python -m common.data download p1ch3")


