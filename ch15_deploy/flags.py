"""Chapter 15: argparse types and parent parsers that several ch15 scripts share."""
import argparse


def at_least(kind, minimum):
    """argparse type: a number of `kind` (int or float) that is at least `minimum`."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            noun = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if not value >= minimum:                     # also refuses NaN
            raise argparse.ArgumentTypeError(f"{text} is below {minimum}")
        return value
    parse.__name__ = f"{kind.__name__} >= {minimum}"     # argparse names the type in errors
    return parse


def port_number(text):
    """argparse type: a TCP port, 0 (any free one) to 65535."""
    port = at_least(int, 0)(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (0-65535)")
    return port


def server_arguments(port=8000):
    """Parent parser of both servers: --host (loopback unless told) and --port."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default: %(default)s, this machine only; 0.0.0.0 "
                             "opens it to the network)")
    parser.add_argument("--port", type=port_number, default=port, help="(default: %(default)s)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                        help="serve the classifier compiled ahead of time by inductor, with "
                             "freezing (chapter 13's precision.py; the first start compiles it "
                             "and keeps it under <data root>/cache/programs). Default: off")
    return parser
