"""Chapter 15: TorchScript, tracing versus scripting, then a traced LunaModel saved and reloaded.

    python ch15_deploy/jit_intro.py                    # the book's classifier checkpoint
    python ch15_deploy/jit_intro.py --random-weights   # without it

Tracing runs the function once on an example and records the tensor operations it saw: a loop
over x.shape[0] is unrolled for the example's size, and an `if` on a tensor's value becomes a
constant (a TracerWarning). Scripting compiles the Python source, loops and branches included.
`.code` prints what each one holds. The classifier has no data-dependent control flow, so it
is traced after eval() and requires_grad_(False), saved with torch.jit.save and loaded back
with torch.jit.load. TorchScript is in maintenance in current PyTorch (its DeprecationWarning
is silenced here); it is still what LibTorch's torch::jit::load reads.
"""
import argparse
import contextlib
import warnings
from functools import partial
from pathlib import Path

import torch

from ch15_deploy.classifier import example_crop, hu_like_crop, load_classifier, model_arguments
from ch15_deploy.model_files import save_through_memory
from common.errors import run_cli
from common.files import output_dir, runs_dir


def sum_rows(x):
    """The sum over the first dimension, written with a Python loop over x.shape[0]."""
    y = x[0]
    for i in range(1, x.shape[0]):
        y = y + x[i]
    return y


def flip_if_negative(x):
    """x, or -x when its sum is negative: an `if` on a tensor's value."""
    if x.sum() < 0:
        return -x
    return x


@contextlib.contextmanager
def jit_warnings(caught):
    """Collect TracerWarnings into `caught`; silence the jit's own deprecation notices."""
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated",
                                category=DeprecationWarning)
        yield
    for w in recorded:
        if issubclass(w.category, torch.jit.TracerWarning):
            caught.append(str(w.message).split(". ")[0])
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def trace_vs_script(announce=print):
    """Trace and script sum_rows and flip_if_negative; show their code and where tracing fails."""
    g = torch.Generator().manual_seed(0)
    x5, x7, x3 = (torch.randn(n, 4, generator=g) for n in (5, 7, 3))
    trace_warnings = []
    with jit_warnings(trace_warnings):
        traced = torch.jit.trace(sum_rows, x5)
        scripted = torch.jit.script(sum_rows)
        try:                                           # the trace checker runs a second size
            torch.jit.trace(sum_rows, x5, check_inputs=[(x7,)])
            check_failed = False
        except torch.jit.TracingCheckError:
            check_failed = True
    announce("sum_rows traced on a 5 x 4 input (the loop is unrolled into 4 additions):")
    announce(traced.code)
    announce("sum_rows scripted (the loop is kept):")
    announce(scripted.code)
    announce(f"tracing again with check_inputs=[7 x 4] fails its sanity check: {check_failed}")
    traced_7 = float((traced(x7) - x7.sum(0)).abs().max())
    scripted_7 = float((scripted(x7) - x7.sum(0)).abs().max())
    announce(f"7 x 4 input, max abs error against x.sum(0): traced {traced_7:.3g} (adds the "
             f"first 5 rows only), scripted {scripted_7:.3g}")
    try:
        traced(x3)
        traced_3 = "ran"
    except RuntimeError as e:
        traced_3 = str(e).strip().splitlines()[-1]
    announce(f"3 x 4 input: traced -> {traced_3}; scripted -> max abs error "
             f"{float((scripted(x3) - x3.sum(0)).abs().max()):.3g}")

    branch_warnings = []
    with jit_warnings(branch_warnings):
        traced_if = torch.jit.trace(flip_if_negative, torch.ones(3))
        scripted_if = torch.jit.script(flip_if_negative)
    minus = -torch.ones(3)
    announce(f"flip_if_negative traced on ones(3): TracerWarning: {branch_warnings[0]}"
             if branch_warnings else "flip_if_negative traced: no TracerWarning (unexpected)")
    announce(traced_if.code)
    announce(f"on -ones(3): traced {traced_if(minus).tolist()}, scripted "
             f"{scripted_if(minus).tolist()}, Python {flip_if_negative(minus).tolist()}")
    return {"traced": traced, "scripted": scripted, "check_failed": check_failed,
            "traced_error_7": traced_7, "scripted_error_7": scripted_7, "traced_3": traced_3,
            "loop_warnings": trace_warnings, "branch_warnings": branch_warnings,
            "traced_if": traced_if, "scripted_if": scripted_if}


def trace_model(model, example):
    """torch.jit.trace of an eval-mode model with gradients off; (traced, TracerWarnings)."""
    model.eval().requires_grad_(False)
    caught = []
    with jit_warnings(caught):
        traced = torch.jit.trace(model, example)
    return traced, caught


def save_and_reload(traced, path):
    """torch.jit.save, then torch.jit.load on the CPU: the round trip a deployment makes.

    Written whole or not at all (model_files.save_through_memory)."""
    path = Path(path)
    with jit_warnings([]):
        save_through_memory(path, partial(torch.jit.save, traced), "TorchScript file")
        return torch.jit.load(str(path), map_location="cpu")


def max_abs_diff(a, b):
    """Largest absolute difference between two (logits, probs) pairs."""
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                parents=[model_arguments()])
    p.add_argument("--out", default=runs_dir("ch15"),
                   help="folder for luna_traced.pt (default: the repository's runs/ch15)")
    args = p.parse_args(argv)
    model = load_classifier(args.model, args.data_dir, args.random_weights)
    crop, source = example_crop(args.data_dir)
    out = output_dir(args.out, "--out")        # every input and the output checked before work
    intro = trace_vs_script()

    x = crop.unsqueeze(0)                                          # (1, 1, 32, 48, 48)
    traced, caught = trace_model(model, x)
    print(f"LunaModel traced with {len(caught)} TracerWarnings; its forward:")
    print(traced.code)
    path = out / "luna_traced.pt"
    reloaded = save_and_reload(traced, path)
    with torch.inference_mode():
        eager, from_trace, from_file = model(x), traced(x), reloaded(x)
        batch = torch.cat([x, x.flip(-1), hu_like_crop(1).unsqueeze(0)])   # another batch size
        batch_diff = max_abs_diff(model(batch), reloaded(batch))
    trace_diff, file_diff = max_abs_diff(eager, from_trace), max_abs_diff(eager, from_file)
    print(f"on {source}: P(nodule) eager {float(eager[1][0, 1]):.4g}, reloaded "
          f"{float(from_file[1][0, 1]):.4g}")
    print(f"max abs difference against eager: traced {trace_diff:.3g}, saved+reloaded "
          f"{file_diff:.3g}, reloaded on a batch of 3 {batch_diff:.3g}")
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    return {**intro, "model_warnings": caught, "path": path, "trace_diff": trace_diff,
            "file_diff": file_diff, "batch_diff": batch_diff}


if __name__ == "__main__":
    run_cli(main)
