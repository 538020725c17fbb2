"""Chapter 4.4: time series, the hourly bike sharing counts.  python ch04_data/bikes.py

Loads hour-fixed.csv (17,520 hours x 17 columns, the day-of-month kept from the date),
reshapes it into 730 days x 24 hours with a view, moves the hour axis last
(N, C, L = 730, 17, 24), one-hot encodes the weather situation into 4 extra channels
(21 in all), and rescales the weather and temperature columns. Writes runs/ch04/bikes.png in
the repository (rentals by hour of the day).
"""
import argparse
import datetime

import torch

from ch04_data.tables import check_codes, read_table
from common.data import add_data_dir_argument, book_file
from common.errors import DataError, run_cli
from common.figures import new_figure, save_figure
from common.files import check_writable, runs_dir

HOUR_CSV = "p1ch4/bike-sharing-dataset/hour-fixed.csv"
N_COLUMNS = 17
DTEDAY, WORKINGDAY, WEATHERSIT, TEMP, CNT = 1, 8, 9, 10, 16   # column indices
N_WEATHER = 4                      # weathersit runs 1 (clear) .. 4 (heavy rain)
USED_COLUMNS = {DTEDAY: "dteday", WORKINGDAY: "workingday", WEATHERSIT: "weathersit",
                TEMP: "temp", CNT: "cnt"}   # read by position: the header must agree


def day_of_month(text):
    """"2011-01-01" -> 1.0, the book's converter (s[8:10]); a ValueError for another date."""
    return float(datetime.date.fromisoformat(text.strip()).day)


def load_hours(path):
    """(17520, 17) float32 tensor; the date column becomes its day of the month.

    The book's np.loadtxt with every cell checked (tables.py), whole days of 24 hours, the
    weather codes 1..4 (they index the one-hot) and a temperature that varies (min-max)."""
    table, header = read_table(path, ",", USED_COLUMNS, converters={DTEDAY: day_of_month})
    if len(header) != N_COLUMNS or len(table) % 24:
        raise DataError(f"{path}: expected whole days of 24 hours x {N_COLUMNS} columns, got "
                        f"{len(table)} rows x {len(header)} columns")
    check_codes(path, table[:, WEATHERSIT], "weathersit", 1, N_WEATHER)
    if table[:, TEMP].min() == table[:, TEMP].max():
        raise DataError(f"{path}: temp is {table[0, TEMP]:g} in every row: nothing to rescale")
    return torch.from_numpy(table)


def to_days(bikes):
    """(hours, C) -> (days, C, 24): a view into days, then the hour axis moved last."""
    daily = bikes.view(-1, 24, bikes.shape[1])   # (730, 24, 17), strides (408, 17, 1): no copy
    return daily.transpose(1, 2)                 # (730, 17, 24), strides (408, 1, 17)


def weather_one_hot(daily):
    """(days, C, 24) -> (days, 4, 24): weathersit 1..4 as a one-hot channel block."""
    onehot = torch.zeros(daily.shape[0], N_WEATHER, daily.shape[2])
    index = daily[:, WEATHERSIT, :].long().unsqueeze(1) - 1   # (days, 1, 24), values 0..3
    return onehot.scatter_(1, index, 1.0)


def prepare(daily):
    """Append the weather one-hot (C -> C + 4) and rescale weathersit and temperature."""
    out = torch.cat((daily, weather_one_hot(daily)), dim=1)    # (730, 21, 24), a new tensor
    out[:, WEATHERSIT, :] = (out[:, WEATHERSIT, :] - 1.0) / 3.0   # 1..4 -> 0..1
    temp = out[:, TEMP, :]
    out[:, TEMP, :] = (temp - temp.min()) / (temp.max() - temp.min())   # min-max to 0..1
    return out


def z_score(x):
    """The alternative the book shows: mean 0, standard deviation 1."""
    return (x - x.mean()) / x.std()


def plot_hourly(daily, out_dir):
    """Mean rentals for each hour of the day, working days against the rest."""
    working = daily[:, WORKINGDAY, 0] == 1
    fig = new_figure(figsize=(8, 4))
    ax = fig.subplots()
    hours = range(24)
    for mask, label in ((working, "working days"), (~working, "weekends and holidays")):
        counts = daily[mask][:, CNT, :]           # (days, 24)
        mean, std = counts.mean(dim=0), counts.std(dim=0)
        ax.plot(hours, mean, marker="o", label=f"{label} ({int(mask.sum())})")
        ax.fill_between(hours, mean - std, mean + std, alpha=0.2)
    ax.set(title="Bike rentals by hour of the day (mean ± std over days)",
           xlabel="hour", ylabel="rentals per hour", xticks=range(0, 24, 2))
    ax.legend()
    return save_figure(fig, out_dir / "bikes.png")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_dir_argument(p)
    p.add_argument("--out", default=str(runs_dir("ch04")),
                   help="folder for bikes.png (default: %(default)s)")
    args = p.parse_args(argv)

    path = book_file(HOUR_CSV, args.data_dir, name="bikes")
    out = check_writable(args.out, "--out")             # made by the first write, not before
    bikes = load_hours(path)
    print(f"hours {tuple(bikes.shape)}, strides {bikes.stride()}")
    days = bikes.view(-1, 24, bikes.shape[1])
    print(f"days {tuple(days.shape)}, strides {days.stride()}")
    daily = to_days(bikes)
    print(f"days transposed to (N, C, L) {tuple(daily.shape)}, strides {daily.stride()}")

    first_day = bikes[:24]
    first_onehot = torch.zeros(24, N_WEATHER).scatter_(
        1, first_day[:, WEATHERSIT].long().unsqueeze(1) - 1, 1.0)
    print(f"first day's weather {first_day[:, WEATHERSIT].long().tolist()}")
    first_hour = torch.cat((first_day, first_onehot), 1)[0]        # 17 columns + 4 one-hot
    print(f"  first hour with its one-hot appended: {[round(v, 4) for v in first_hour.tolist()]}")

    prepared = prepare(daily)
    temp = daily[:, TEMP, :]
    temp_z = z_score(temp)
    print(f"prepared {tuple(prepared.shape)}: weathersit in [{prepared[:, WEATHERSIT].min():.2f}, "
          f"{prepared[:, WEATHERSIT].max():.2f}], temp min-max in "
          f"[{prepared[:, TEMP].min():.2f}, {prepared[:, TEMP].max():.2f}], "
          f"temp z-score mean {temp_z.mean():.3f} std {temp_z.std():.3f}")

    png = plot_hourly(daily, out)
    print(f"wrote {png}")
    return {"bikes": bikes, "daily": daily, "prepared": prepared, "temp_z": temp_z,
            "first_onehot": first_onehot, "png": png}


if __name__ == "__main__":
    run_cli(main)
