"""Chapter 4 bonus: video frames as (C, T, H, W) and (T, C, H, W) tensors."""
import pytest
import torch

from ch04_data import video
from common.errors import DataError


def test_layouts_are_views_with_the_right_axes():
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (5, 6, 7, 3), generator=g, dtype=torch.uint8)  # T, H, W, C
    cthw, tchw = video.layouts(frames)
    assert cthw.shape == (3, 5, 6, 7) and tchw.shape == (5, 3, 6, 7)
    assert cthw.data_ptr() == tchw.data_ptr() == frames.data_ptr()
    assert cthw[2, 4, 1, 6] == frames[4, 1, 6, 2] == tchw[4, 2, 1, 6]


def test_plot_frames_writes_a_png(tmp_path):
    frames = torch.zeros(10, 12, 16, 3, dtype=torch.uint8)
    frames[:, :, :, 0] = torch.arange(10).view(10, 1, 1) * 25          # redder over time
    path = video.plot_frames(video.layouts(frames)[0], tmp_path)
    assert path == tmp_path / "video.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_a_video_plugin_it_names_the_package(tmp_path, monkeypatch):
    path = tmp_path / video.COCKATOO_MP4
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    monkeypatch.setattr(video, "video_plugin", lambda: None)
    with pytest.raises(DataError, match="pip install imageio-ffmpeg"):
        video.main(["--data-dir", str(tmp_path), "--out", str(tmp_path)])


@pytest.mark.realdata
def test_the_cockatoo(book_root, tmp_path):
    root = book_root(video.COCKATOO_MP4, "video-cockatoo")
    if video.video_plugin() is None:
        pytest.skip(f"imageio has no MP4 reader here (neither imageio-ffmpeg nor av); "
                    f"install one with: {video.INSTALL_HINT}")
    result = video.main(["--data-dir", str(root), "--max-frames", "8", "--out", str(tmp_path)])
    assert result["n_frames"] == 280
    assert result["frames"].shape == (8, 720, 1280, 3)
    assert result["video_cthw"].shape == (3, 8, 720, 1280)
    assert result["video_tchw"].shape == (8, 3, 720, 1280)
    assert result["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
