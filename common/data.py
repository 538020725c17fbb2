"""Data root, the registry of downloadable files, and one-line errors for bad input.

    python -m common.data list
    python -m common.data download wine dicom-ct
"""
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


class DataError(Exception):
    """Missing or malformed input: a script prints it as one line and exits non-zero."""


def run_cli(main, argv=None):
    """`if __name__ == "__main__": run_cli(main)`: DataError -> one line on stderr, exit 2."""
    try:
        return main(argv)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None


def data_root(data_dir=None):
    """`--data-dir` > `$DLWPT_DATA` > `data/` in the repository."""
    if data_dir:
        return Path(data_dir).expanduser()
    env = os.environ.get("DLWPT_DATA")
    return Path(env).expanduser() if env else REPO_ROOT / "data"


def add_data_dir_argument(parser):
    """The `--data-dir` flag every script shares."""
    parser.add_argument("--data-dir", default=None,
                        help="data root (default: $DLWPT_DATA, else data/ in the repository)")


def book_file(relpath, data_dir=None, name=None):
    """Path of a file under the data root; a missing one is a DataError naming the download."""
    path = data_root(data_dir) / relpath
    if not path.exists():
        hint = (f"; get it with:  python -m common.data download {name}" if name
                else "")
        raise DataError(f"{path} not found{hint}")
    return path
