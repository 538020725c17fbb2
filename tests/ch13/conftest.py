"""A tiny synthetic LUNA sample for the chapter 13 tests (generated once per session)."""
import pytest

from ch10_luna.dsets import find_luna
from ch10_luna.synthetic import generate_sample


@pytest.fixture(scope="session")
def seg_luna(tmp_path_factory):
    """3 CTs (14 nodules) in LUNA16's layout with few negatives: LunaFiles for it."""
    folder = generate_sample(tmp_path_factory.mktemp("seg") / "luna", n_series=3, seed=11,
                             n_subsets=1, negatives=(5, 8), progress=False)
    return find_luna(folder)


@pytest.fixture(scope="session")
def seg_masks(seg_luna, tmp_path_factory):
    """series_uid -> SeriesMask of the sample, built into a session cache folder."""
    from ch13_segment.dsets import annotation_centers, load_masks

    return load_masks(seg_luna.series, annotation_centers(seg_luna),
                      tmp_path_factory.mktemp("seg_masks"), progress=False)
