"""One step of .ci/gpu: run a script's main(argv) as its command line would, and keep what it
returns (the figures it printed, as numbers) in a JSON file.

    python .ci/gpu_step.py ch10_luna.benchmark result.json --device cuda --steps 200

The same as `python ch10_luna/benchmark.py --device cuda --steps 200` (bad input: one line,
exit 2, through run_cli), plus result.json. Every script's main returns its results, so no
benchmark needs a --json flag to be collected.
"""
import argparse
import importlib
import math
import sys
from pathlib import Path

from common.errors import run_cli
from common.files import write_json

MAX_ITEMS = 1000                 # a longer array is summarised, not copied into the summary


def jsonable(value):
    """`value` as plain JSON: dict keys as strings (False -> 'False'), tuples and namedtuples as
    lists and dicts, numpy and torch scalars and small arrays as numbers, NaN and infinity as
    None, anything else as its repr."""
    if hasattr(value, "_asdict"):                                   # namedtuple
        return jsonable(value._asdict())
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist") and hasattr(value, "shape"):       # numpy array, torch tensor
        size = math.prod(value.shape)
        if size > MAX_ITEMS:
            return f"<array of shape {tuple(value.shape)}>"
        return jsonable(value.tolist())
    if hasattr(value, "item"):                                      # numpy scalar
        return jsonable(value.item())
    return repr(value)[:200]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("module", help="the script as a module, e.g. ch10_luna.benchmark")
    p.add_argument("result", help="JSON file for what its main returns")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the script's own flags")
    args = p.parse_args(argv)
    module = importlib.import_module(args.module)
    sys.argv = [module.__file__, *args.args]                        # its usage lines, its argv
    result = run_cli(module.main, args.args)
    write_json(args.result, jsonable(result), "--result")


if __name__ == "__main__":
    run_cli(main)
