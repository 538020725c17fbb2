"""A tiny synthetic LUNA sample (generated once per session) and tiny checkpoints for ch13 tests."""
import pytest
import torch

from ch10_luna.dsets import find_luna
from ch10_luna.model import LunaModel
from ch10_luna.synthetic import generate_sample
from ch13_segment.model import UNetWrapper
from tests.helpers import save_model_state


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


@pytest.fixture
def tiny_models(tmp_path):
    """Random-init small U-Net and classifiers saved as checkpoints: paths (seg, cls, mal).

    A random U-Net marks ~10% of a CT in hundreds of pieces, and classifying them all takes a
    minute; with its last layer zeroed and a positive bias it marks every voxel instead, which
    gives one candidate per CT (the whole eroded volume).
    """
    torch.manual_seed(0)
    seg = UNetWrapper(in_channels=7, n_classes=1, depth=2, wf=2, padding=True, batch_norm=True)
    with torch.no_grad():
        seg.unet.last.weight.zero_()
        seg.unet.last.bias.fill_(5.0)
    return (save_model_state(seg, tmp_path / "seg.state"),
            save_model_state(LunaModel(conv_channels=2), tmp_path / "cls.state"),
            save_model_state(LunaModel(conv_channels=2), tmp_path / "mal.state"))
