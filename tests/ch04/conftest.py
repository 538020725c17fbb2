"""Fixtures for chapter 4: where the book's files are, skipping with the reason when absent."""
from pathlib import Path

import pytest

from common.data import data_root

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO_ROOT.parent / "shared" / "dlwpt-data"


@pytest.fixture(scope="session")
def book_root():
    """`book_root(relpath, name)` -> the data root holding relpath; skips naming the download."""
    def find(relpath, name):
        roots = [data_root(), SHARED_DATA]
        for root in roots:
            if (root / relpath).exists():
                return root
        pytest.skip(f"{relpath} not under {' or '.join(map(str, roots))}; "
                    f"get it with: python -m common.data download {name}")
    return find
