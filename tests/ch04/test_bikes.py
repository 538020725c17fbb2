"""Chapter 4.4: hourly bike rentals reshaped into days, weather one-hot, rescaled columns."""
import pytest
import torch

from ch04_data import bikes


def fake_hours(n_days=3, seed=0):
    """(24 * n_days, 17) hours with weathersit in 1..4 and a temperature column."""
    g = torch.Generator().manual_seed(seed)
    hours = torch.rand(24 * n_days, bikes.N_COLUMNS, generator=g)
    hours[:, 0] = torch.arange(1, 24 * n_days + 1)                     # "instant"
    hours[:, bikes.WEATHERSIT] = torch.randint(1, 5, (24 * n_days,), generator=g).float()
    return hours


def test_days_view_and_transpose_strides():
    hours = fake_hours(3)
    days = hours.view(-1, 24, hours.shape[1])
    assert days.shape == (3, 24, 17) and days.stride() == (408, 17, 1)
    daily = bikes.to_days(hours)
    assert daily.shape == (3, 17, 24) and daily.stride() == (408, 1, 17)
    assert daily.data_ptr() == hours.data_ptr()              # no copy
    assert torch.equal(daily[1, :, 5], hours[24 + 5])        # day 1, hour 5


def test_weather_one_hot_rows_sum_to_one_at_weathersit_minus_one():
    daily = bikes.to_days(fake_hours(4))
    onehot = bikes.weather_one_hot(daily)
    assert onehot.shape == (4, 4, 24)
    torch.testing.assert_close(onehot.sum(dim=1), torch.ones(4, 24))
    assert torch.equal(onehot.argmax(dim=1) + 1, daily[:, bikes.WEATHERSIT].long())


def test_prepare_appends_four_channels_and_rescales():
    daily = bikes.to_days(fake_hours(5))
    original = daily.clone()
    prepared = bikes.prepare(daily)
    assert prepared.shape == (5, 21, 24)
    assert torch.equal(daily, original)                      # the input is left alone
    assert torch.allclose(prepared[:, bikes.WEATHERSIT], (original[:, bikes.WEATHERSIT] - 1) / 3)
    assert prepared[:, bikes.TEMP].min() == 0 and prepared[:, bikes.TEMP].max() == 1


@pytest.fixture(scope="module")
def result(book_root, tmp_path_factory):
    root = book_root(bikes.HOUR_CSV, "bikes")
    return bikes.main(["--data-dir", str(root), "--out", str(tmp_path_factory.mktemp("bikes"))])


@pytest.mark.realdata
def test_shapes_and_strides_on_the_real_table(result):
    assert result["bikes"].shape == (17520, 17) and result["bikes"].stride() == (17, 1)
    assert result["bikes"][0, bikes.DTEDAY] == 1 and result["bikes"][-1, bikes.DTEDAY] == 31
    assert result["daily"].shape == (730, 17, 24) and result["daily"].stride() == (408, 1, 17)
    assert result["prepared"].shape == (730, 21, 24)
    assert result["first_onehot"].shape == (24, 4)


@pytest.mark.realdata
def test_weather_one_hot_and_ranges_on_the_real_table(result):
    prepared, daily = result["prepared"], result["daily"]
    onehot = prepared[:, 17:]
    torch.testing.assert_close(onehot.sum(dim=1), torch.ones(730, 24))
    assert torch.equal(onehot.argmax(dim=1) + 1, daily[:, bikes.WEATHERSIT].long())
    weathersit = prepared[:, bikes.WEATHERSIT]
    assert weathersit.min() == 0 and weathersit.max() == 1
    assert set((weathersit * 3).round().unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}
    assert prepared[:, bikes.TEMP].min() == 0 and prepared[:, bikes.TEMP].max() == 1
    assert abs(result["temp_z"].mean().item()) < 1e-4
    assert result["temp_z"].std().item() == pytest.approx(1, abs=1e-4)
    assert torch.equal(prepared[:, bikes.CNT], daily[:, bikes.CNT])   # the rest is untouched


@pytest.mark.realdata
def test_writes_the_png(result):
    assert result["png"].name == "bikes.png"
    assert result["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
