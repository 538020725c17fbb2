"""Shared fixtures: where the book's data lives, and a CUDA device for parity tests."""
import os
from pathlib import Path

import pytest
import torch

from common.data import REPO_ROOT

SHARED_BOOK_DATA = REPO_ROOT.parent / "shared" / "dlwpt-data"


def find_book_file(relpath):
    """A book data file from $DLWPT_DATA, else ../shared/dlwpt-data; None when neither has it."""
    for root in (os.environ.get("DLWPT_DATA"), SHARED_BOOK_DATA, REPO_ROOT / "data"):
        if root and (Path(root) / relpath).exists():
            return Path(root) / relpath
    return None


@pytest.fixture
def book_file():
    """book_file('p1ch4/tabular-wine/winequality-white.csv') -> Path, or skip with the reason."""
    def get(relpath):
        path = find_book_file(relpath)
        if path is None:
            pytest.skip(f"book data file {relpath} not found (set DLWPT_DATA or run "
                        "`python -m common.data download ...`)")
        return path
    return get


@pytest.fixture
def cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    return torch.device("cuda")


@pytest.fixture
def one_torch_thread():
    """For tests of tiny models: on a busy 2-core machine torch's thread pool costs 5-10x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
