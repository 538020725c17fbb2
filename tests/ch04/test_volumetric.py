"""Chapter 4.2: the DICOM CT, read by imageio (the book) and by common.ct.load_ct."""
import numpy as np
import pytest

from ch04_data import volumetric


@pytest.fixture(scope="module")
def result(book_root, tmp_path_factory):
    """The slow part of this folder (two readers over 99 slices): run once per module."""
    root = book_root(volumetric.DICOM_DIR, "dicom-ct")
    return volumetric.main(["--data-dir", str(root),
                            "--out", str(tmp_path_factory.mktemp("ct"))])


@pytest.mark.realdata
def test_volume_and_channel_axis(result):
    vol_arr = result["vol_arr"]
    assert vol_arr.shape == (99, 512, 512) and vol_arr.dtype == np.int16
    assert (vol_arr.min(), vol_arr.max()) == (-1024, 3071)       # HU: the rescale is applied
    assert tuple(result["vol"].shape) == (1, 99, 512, 512)
    ct = result["ct"]
    assert tuple(ct.spacing_xyz) == (0.564453125, 0.564453125, 3.0)


@pytest.mark.realdata
def test_imageio_and_load_ct_agree(result):
    ct = result["ct"]
    vol_arr = volumetric.read_dicom_imageio(ct.path)
    if vol_arr is None:
        pytest.skip("this imageio has no DICOM plugin (deprecated, removed in newer releases)")
    # Same HU voxels; imageio stacks by InstanceNumber, SimpleITK by increasing z.
    assert not np.array_equal(vol_arr, ct.voxels)
    assert np.array_equal(vol_arr[::-1], ct.voxels)
    clipped = np.clip(vol_arr[::-1], -1000, 1000).astype(np.float32)
    assert np.array_equal(clipped, ct.hu)
    assert ct.hu.min() == -1000 and ct.hu.max() == 1000


@pytest.mark.realdata
def test_writes_the_png(result):
    assert result["png"].name == "volumetric.png"
    assert result["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
