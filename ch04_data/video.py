"""Chapter 4 bonus: video as tensors, the cockatoo clip.  python ch04_data/video.py

Decodes cockatoo.mp4 (280 frames of 720 x 1280 RGB) and lays the frames out two ways:
(C, T, H, W) = (3, 280, 720, 1280), the layout 3D convolutions take (time is one more
spatial axis), and (T, C, H, W), a batch of images for 2D convolutions. Both are views of
one uint8 tensor (774 MB); `--max-frames` keeps fewer. Reading MP4 needs a video plugin
for imageio: `pip install imageio-ffmpeg` (or `av`). Writes runs/ch04/video.png in the
repository.
"""
import argparse
import importlib.util

import imageio.v3 as iio
import torch

from common.data import add_data_dir_argument, book_file
from common.errors import DataError, one_line, require_at_least, run_cli
from common.figures import new_figure, save_figure
from common.files import check_writable, runs_dir

COCKATOO_MP4 = "p1ch4/video-cockatoo/cockatoo.mp4"
INSTALL_HINT = "pip install imageio-ffmpeg"
PLUGINS = (("av", "pyav"), ("imageio_ffmpeg", "FFMPEG"))   # (module to import, imageio plugin)


def video_plugin():
    """The imageio plugin that can decode MP4 here ("pyav" or "FFMPEG"), or None."""
    for module, plugin in PLUGINS:
        if importlib.util.find_spec(module) is not None:
            return plugin
    return None


def read_frames(path, plugin, max_frames=None):
    """(T, H, W, 3) uint8 tensor of the first max_frames frames (all when None), and the
    clip's total frame count (the whole clip is decoded to count it)."""
    frames, n_total = [], 0
    try:
        for frame in iio.imiter(path, plugin=plugin):
            if max_frames is None or n_total < max_frames:
                frames.append(torch.from_numpy(frame[..., :3].copy()))
            n_total += 1
    except Exception as e:          # ffmpeg and av report a damaged file in their own ways
        raise DataError(f"{path}: cannot decode the video ({type(e).__name__}: "
                        f"{one_line(e, 100)})") from None
    if not frames:
        raise DataError(f"{path}: no frames decoded")
    return torch.stack(frames), n_total


def layouts(frames):
    """(T, H, W, C) -> views (C, T, H, W) for 3D convolutions and (T, C, H, W) for 2D.

    The book's notebook transposes each frame with transpose(0, 2), which gives
    (C, W, H); permuting keeps rows and columns in the usual (H, W) order."""
    return frames.permute(3, 0, 1, 2), frames.permute(0, 3, 1, 2)


def plot_frames(video_cthw, out_dir, n=6):
    """n frames spread over the clip, from the (C, T, H, W) tensor."""
    n_frames = video_cthw.shape[1]
    picks = torch.linspace(0, n_frames - 1, min(n, n_frames)).round().long().tolist()
    fig = new_figure(figsize=(2.6 * len(picks), 2.2))
    axes = fig.subplots(1, len(picks), squeeze=False)
    for ax, t in zip(axes[0], picks, strict=True):
        ax.imshow(video_cthw[:, t].permute(1, 2, 0).numpy())   # (C, H, W) -> (H, W, C)
        ax.set_title(f"frame {t}")
        ax.axis("off")
    fig.suptitle(f"video tensor (C, T, H, W) = {tuple(video_cthw.shape)}")
    return save_figure(fig, out_dir / "video.png", dpi=80)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_dir_argument(p)
    p.add_argument("--max-frames", type=int, default=None,
                   help="keep only the first N frames (default: all 280)")
    p.add_argument("--out", default=str(runs_dir("ch04")),
                   help="folder for video.png (default: %(default)s)")
    args = p.parse_args(argv)
    require_at_least("--max-frames", args.max_frames, 1)   # None: every frame

    path = book_file(COCKATOO_MP4, args.data_dir, name="video-cockatoo")
    if not path.is_file():
        raise DataError(f"{path}: a folder, not a video file")
    out = check_writable(args.out, "--out")             # made by the first write, not before
    plugin = video_plugin()
    if plugin is None:
        raise DataError(f"reading {path.name} needs a video plugin for imageio "
                        f"(imageio-ffmpeg or av); install one with:  {INSTALL_HINT}")
    frames, n_total = read_frames(path, plugin, args.max_frames)
    print(f"{n_total} frames in the clip (decoded with imageio's {plugin} plugin), "
          f"kept {len(frames)}: {tuple(frames.shape)} {frames.dtype} (T, H, W, C)")
    video_cthw, video_tchw = layouts(frames)
    print(f"(C, T, H, W) {tuple(video_cthw.shape)}  for 3D convolutions")
    print(f"(T, C, H, W) {tuple(video_tchw.shape)}  a batch of images for 2D convolutions")
    png = plot_frames(video_cthw, out)
    print(f"wrote {png}")
    return {"n_frames": n_total, "frames": frames, "video_cthw": video_cthw,
            "video_tchw": video_tchw, "png": png}


if __name__ == "__main__":
    run_cli(main)
