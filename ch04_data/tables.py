"""Chapter 4: the CSV reader wine.py and bikes.py share, checking what the book takes on trust.

`read_table(path, ";", {6: "total sulfur dioxide", 11: "quality"})` returns the cells as a
float32 (rows, columns) array and the header. Everything the book's `np.loadtxt` would trip
over, or silently accept, is one DataError naming the file, the line and the column: a folder
or an empty file, bytes that are not UTF-8, a column missing or moved, a row of another
length, a cell that is not a finite number.
"""
import csv
import io
import math
from pathlib import Path

import numpy as np

from common.errors import DataError


def read_csv_text(path):
    """The text of a CSV file; a DataError for a folder, an empty file or non-UTF-8 bytes."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: a folder, not a CSV file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if not data.strip():
        raise DataError(f"{path}: empty file, expected a CSV table")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}: {data[e.start:e.start + 1]!r})"
                        ) from None


def read_table(path, delimiter, columns, converters=None):
    """((rows, len(header)) float32 array, header names) of a CSV with a header line.

    columns: {index: name} the script reads by position, checked against the header.
    converters: {index: str -> float} for cells that are not plain numbers (a date).
    """
    rows = csv.reader(io.StringIO(read_csv_text(path)), delimiter=delimiter)
    header = [name.strip() for name in next(rows)]
    for index, name in columns.items():
        found = header[index] if index < len(header) else None
        if found != name:
            where = f"column {index + 1} is {found!r}" if found is not None else \
                f"only {len(header)} columns"
            raise DataError(f"{path}: no column {name!r} where the book reads it ({where}; "
                            f"header: {', '.join(header)[:120]})")
    converters = converters or {}
    table = []
    for line, row in enumerate(rows, start=2):
        if not row:
            continue                                   # a blank line (the last one, often)
        if len(row) != len(header):
            raise DataError(f"{path}: line {line} has {len(row)} fields, the header "
                            f"{len(header)}")
        values = []
        for index, cell in enumerate(row):
            convert = converters.get(index, float)
            try:
                value = convert(cell)
            except ValueError:
                value = None
            if value is None or not math.isfinite(value):
                raise DataError(f"{path}: line {line}, column {header[index]!r}: {cell!r} is "
                                "not a finite number")
            values.append(value)
        table.append(values)
    if not table:
        raise DataError(f"{path}: a header and no data rows")
    return np.array(table, dtype=np.float32), header


def check_codes(path, values, column, low, high):
    """A DataError unless every value of a categorical column is a whole number in low..high."""
    values = np.asarray(values)
    bad = np.flatnonzero((values != np.round(values)) | (values < low) | (values > high))
    if len(bad):
        raise DataError(f"{path}: {column} {values[bad[0]]:g} on data row {bad[0] + 1} "
                        f"(line {bad[0] + 2}): must be a whole number {low}..{high}"
                        + (f" ({len(bad) - 1} more such rows)" if len(bad) > 1 else ""))
