"""Chapter 4 bonus: the chirp's spectrogram and a two-channel stack."""
import numpy as np
import pytest
import scipy.io.wavfile
import torch

from ch04_data import audio
from common.errors import DataError


def test_spectrogram_of_a_sine_peaks_at_its_frequency():
    rate, hz = 44100, 3000
    t = np.arange(5 * rate) / rate
    waveform = torch.from_numpy((8000 * np.sin(2 * np.pi * hz * t)).astype(np.int16))
    freqs, times, power = audio.spectrogram(waveform, rate)
    assert power.shape == (129, 984) and freqs.shape == (129,) and times.shape == (984,)
    peak = freqs[power.mean(dim=1).argmax()].item()
    assert abs(peak - hz) <= rate / 256                      # within one bin
    assert audio.stereo(power, power).shape == (2, 129, 984)


def test_a_stereo_file_is_a_data_error(tmp_path):
    path = tmp_path / "two.wav"
    scipy.io.wavfile.write(path, 8000, np.zeros((100, 2), dtype=np.int16))
    with pytest.raises(DataError, match="mono"):
        audio.read_wav(path)


@pytest.fixture(scope="module")
def result(book_root, tmp_path_factory):
    root = book_root(audio.CHIRP_WAV, "audio-chirp")
    return audio.main(["--data-dir", str(root), "--out", str(tmp_path_factory.mktemp("audio"))])


@pytest.mark.realdata
def test_the_chirp(result):
    assert result["rate"] == 44100 and result["waveform"].shape == (220500,)
    assert result["power"].shape == (129, 984)
    assert result["stereo"].shape == (2, 129, 984)
    assert torch.equal(result["stereo"][0], result["stereo"][1])
    assert result["png"].name == "audio.png"
    assert result["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
