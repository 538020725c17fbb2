"""Chapter 4 bonus: audio as tensors, a bird chirp.  python ch04_data/audio.py

Reads the 5-second ESC-50 clip (44.1 kHz, 220,500 int16 samples), turns it into a
spectrogram (129 frequency bins x 984 time steps) with SciPy, and stacks a left and a
right channel into a (2, 129, 984) "stereo" tensor: the clip is mono, so both channels are
the same spectrogram, as in the book's notebook. Writes runs/ch04/audio.png in the repository.
"""
import argparse
import struct
import warnings
from pathlib import Path

import numpy as np
import scipy.io.wavfile
import scipy.signal
import torch

from common.data import add_data_dir_argument, book_file
from common.errors import DataError, one_line, run_cli
from common.figures import new_figure, save_figure
from common.files import check_writable, runs_dir

CHIRP_WAV = "p1ch4/audio-chirp/1-100038-A-14.wav"


MIN_SAMPLES = 256          # one spectrogram window (SciPy's default nperseg)


def read_wav(path):
    """(sample rate in Hz, (samples,) int16 tensor) for a mono WAV file.

    A truncated file is an error here (SciPy only warns and returns the samples it found), as
    are an empty one, a folder and a clip shorter than one spectrogram window."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: a folder, not a WAV file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", scipy.io.wavfile.WavFileWarning)
            rate, samples = scipy.io.wavfile.read(path)
    except scipy.io.wavfile.WavFileWarning as e:
        raise DataError(f"{path}: truncated or damaged WAV file ({one_line(e, 120)})") from None
    except (ValueError, EOFError, struct.error, OSError) as e:  # SciPy's parser, a short file
        raise DataError(f"{path}: not a WAV file ({type(e).__name__}: {one_line(e, 100)})"
                        ) from None
    if samples.ndim != 1:
        raise DataError(f"{path}: expected a mono clip, got {samples.shape[1]} channels")
    if len(samples) < MIN_SAMPLES or rate <= 0:
        raise DataError(f"{path}: {len(samples)} samples at {rate} Hz, a spectrogram needs at "
                        f"least {MIN_SAMPLES}")
    return rate, torch.from_numpy(samples)


def spectrogram(waveform, rate):
    """(frequencies,), (times,) and (frequencies, times) power tensors (SciPy's defaults:
    256-sample Tukey windows overlapping by 32 samples, so 129 one-sided frequency bins)."""
    freqs, times, power = scipy.signal.spectrogram(waveform.numpy(), rate)
    return torch.from_numpy(freqs), torch.from_numpy(times), torch.from_numpy(power)


def stereo(left, right):
    """Two (F, T) spectrograms -> (2, F, T), channel first like an image."""
    return torch.stack((left, right), dim=0)


def plot_audio(waveform, rate, freqs, times, power, out_dir):
    """The waveform and its spectrogram in decibels."""
    fig = new_figure(figsize=(9, 6))
    ax1, ax2 = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (1, 2)})
    seconds = np.arange(len(waveform)) / rate
    ax1.plot(seconds, waveform.numpy(), linewidth=0.3)
    ax1.set(title=f"1-100038-A-14.wav: {len(waveform):,} samples at {rate} Hz",
            ylabel="amplitude")
    db = 10 * torch.log10(power + 1e-10)       # power -> decibels; the floor avoids log(0)
    mesh = ax2.pcolormesh(times.numpy(), freqs.numpy() / 1000, db.numpy(), shading="auto",
                          vmin=float(db.max()) - 80)
    fig.colorbar(mesh, ax=ax2, label="dB", orientation="horizontal", pad=0.15, shrink=0.6)
    ax2.set(title=f"spectrogram {tuple(power.shape)} (frequency, time)",
            xlabel="time (s)", ylabel="frequency (kHz)")
    return save_figure(fig, out_dir / "audio.png")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_dir_argument(p)
    p.add_argument("--out", default=str(runs_dir("ch04")),
                   help="folder for audio.png (default: %(default)s)")
    args = p.parse_args(argv)

    path = book_file(CHIRP_WAV, args.data_dir, name="audio-chirp")
    out = check_writable(args.out, "--out")             # made by the first write, not before
    rate, waveform = read_wav(path)
    print(f"{rate} Hz, {len(waveform)} samples ({len(waveform) / rate:.2f} s), {waveform.dtype}")
    freqs, times, power = spectrogram(waveform, rate)
    print(f"spectrogram {tuple(power.shape)}: {len(freqs)} bins up to {freqs[-1]:.0f} Hz, "
          f"{len(times)} time steps")
    sp = stereo(power, power)                  # a mono clip: left = right
    print(f"stereo stack {tuple(sp.shape)}")
    png = plot_audio(waveform, rate, freqs, times, power, out)
    print(f"wrote {png}")
    return {"rate": rate, "waveform": waveform, "freqs": freqs, "times": times,
            "power": power, "stereo": sp, "png": png}


if __name__ == "__main__":
    run_cli(main)
