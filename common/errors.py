"""The project's error for bad input, and the wrapper that turns it into one line and exit 2.

    if __name__ == "__main__":
        run_cli(main)
"""
import argparse
import contextlib
import os
import re
import sys

MAX_MESSAGE = 300                   # characters: one readable line, however long the cause


class DataError(Exception):
    """Missing or malformed input: a script prints it as one line and exits with status 2."""


def one_line(text, limit=MAX_MESSAGE):
    """`text` as a single line of at most `limit` characters: line breaks and tabs folded into
    one space (other spaces kept: file names may hold two in a row), the end cut."""
    text = re.sub(r"\s*[\r\n\t]+\s*", " ", str(text)).strip()
    return text if len(text) <= limit else text[:limit - 3] + "..."


def require_at_least(flag, value, least):
    """`value` unless it is below `least` (NaN too): then a DataError naming the flag,
    `--epochs 0: must be at least 1`. None (an optional flag left unset) passes."""
    if value is not None and not value >= least:
        raise DataError(f"{flag} {value}: must be at least {least}")
    return value


@contextlib.contextmanager
def one_line_flag_errors():
    """argparse's own refusals (an unknown flag, a value of the wrong type) as DataErrors: one
    line naming the script and the flag, instead of its usage block and then the error."""
    def error(parser, message):
        raise DataError(f"{parser.prog}: {message} (see --help)")

    original = argparse.ArgumentParser.error
    argparse.ArgumentParser.error = error
    try:
        yield
    finally:
        argparse.ArgumentParser.error = original


def run_cli(main, argv=None):
    """DataError -> `error: ...` on stderr and exit 2 (argparse's refusals too); Ctrl-C ->
    `interrupted`, exit 130; a reader that stops reading (`script | head`) ends the run
    quietly, exit 1."""
    try:
        with one_line_flag_errors():
            return main(argv)
    except DataError as e:
        print(f"error: {one_line(e, 2 * MAX_MESSAGE)}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except BrokenPipeError:
        # Whatever is still buffered for stdout would raise again at exit: send it nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None
