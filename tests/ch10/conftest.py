"""A tiny synthetic LUNA sample shared by the chapter 10 tests (generated once per session)."""
import pytest

from ch10_luna.synthetic import generate_sample


@pytest.fixture(scope="session")
def tiny_luna(tmp_path_factory):
    """4 CTs in LUNA16's layout with few negatives, so a training epoch takes seconds."""
    return generate_sample(tmp_path_factory.mktemp("luna") / "luna", n_series=4, seed=7,
                           n_subsets=2, negatives=(12, 20), progress=False)
