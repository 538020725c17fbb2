"""Chapter 15: one request's latency, eager vs TorchScript vs onnxruntime vs AOTInductor.

    python ch15_deploy/latency.py                      # both models, every backend
    python ch15_deploy/latency.py --models cls --backends eager,onnxruntime --repeats 50
    python ch15_deploy/latency.py --threads 1 --json runs/ch15/latency.json

The LUNA classifier (a 1 x 1 x 32 x 48 x 48 crop) and the chapter 13 U-Net (a 1 x 7 x 512 x 512
input) at batch 1, with seeded random weights (--cls-model / --seg-model load checkpoints),
exported with this folder's own functions (TorchScript, ONNX, AOTInductor), compiled as the
servers' --compile does (AOTInductor with freezing, fp32 and bf16) and chapter 13's int8, and
run eager (also channels-last, and with bf16 autocast). Every backend is compared with
eager first (the largest difference, absolute and relative), then timed: --warmup calls, then
--repeats calls each timed alone; the median and 90th percentile in ms. --threads sets torch's
and onnxruntime's intra-op threads to the same number. Measured tables: NOTES.md.
"""
import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ch10_luna.benchmark import timed
from ch13_segment.model import load_model
from ch15_deploy.classifier import hu_like_crop, load_classifier
from ch15_deploy.export_aoti import as_tuple, compile_package, export_program, load_package
from ch15_deploy.export_jit import load_unet
from ch15_deploy.export_onnx import export_model, onnx_session
from ch15_deploy.flags import at_least
from ch15_deploy.jit_intro import save_and_reload, trace_model
from common.data import add_data_dir_argument
from common.errors import DataError, run_cli
from common.files import output_dir, write_json

MODELS = ("cls", "unet")
MODEL_TITLES = {"cls": "classifier", "unet": "U-Net"}
BACKENDS = ("eager", "eager-cl", "eager-cl-bf16", "torchscript", "onnxruntime", "aoti",
            "compiled", "compiled-bf16", "int8")
BACKEND_TITLES = {"eager": "eager (NCHW)", "eager-cl": "eager, channels-last",
                  "eager-cl-bf16": "eager, channels-last, bf16 autocast",
                  "torchscript": "TorchScript (traced)", "onnxruntime": "ONNX Runtime",
                  "aoti": "AOTInductor (.pt2)",
                  "compiled": "AOTInductor, freezing (--compile)",
                  "compiled-bf16": "AOTInductor, freezing, bf16",
                  "int8": "int8 static (torchao PT2E, compiled)"}
CPU = torch.device("cpu")


def build_models(models, cls_model=None, seg_model=None, data_dir=None, unet_size=512):
    """{name: (eval-mode model, batch-1 input)} for 'cls' and 'unet', from checkpoints or seeded.

    All are loaded before any is measured, so a bad checkpoint stops the run at once.
    """
    built = {}
    if "cls" in models:
        model = load_classifier(cls_model, data_dir, random_weights=cls_model is None,
                                flag="--cls-model")
        built["cls"] = model, hu_like_crop(0).unsqueeze(0)            # (1, 1, 32, 48, 48) HU
    if "unet" in models:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, 7, unet_size, unet_size, generator=g)
        if seg_model is None:             # unit scale: untrained batch norm expects (0, 1)
            built["unet"] = load_unet(), x
        else:
            model = load_model(seg_model, "UNetWrapper", "--seg-model").requires_grad_(False)
            built["unet"] = model, (x * 150 - 700).clamp(-1000, 1000)  # lung-like HU slices
    return built


def memory_format(x):
    return torch.channels_last_3d if x.dim() == 5 else torch.channels_last


def prepare(backend, name, model, x, out, threads, calibration=None):
    """(callable, its input, export seconds) for one backend; files go to `out`; int8
    quantizes with chapter 13's precision.py, calibrated on `calibration` (input batches)."""
    start = time.perf_counter()
    if backend == "eager":
        return model, x, 0.0
    if backend in ("eager-cl", "eager-cl-bf16"):
        fmt = memory_format(x)
        model_cl = copy.deepcopy(model).to(memory_format=fmt)
        if backend == "eager-cl":
            return model_cl, x.contiguous(memory_format=fmt), 0.0

        def bf16(t):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return tuple(o.float() for o in as_tuple(model_cl(t)))
        return bf16, x.contiguous(memory_format=fmt), 0.0
    example = x.repeat(2, *[1] * (x.dim() - 1))       # a batch of 2 keeps the batch dynamic
    if backend == "torchscript":
        traced, _ = trace_model(model, x)
        run = save_and_reload(traced, Path(out) / f"{name}_traced.pt")
    elif backend == "onnxruntime":
        path = Path(out) / f"{name}.onnx"
        with torch.no_grad():
            outputs = [f"out{i}" for i in range(len(as_tuple(model(x))))]
        export_model(model, path, example, ["x"], outputs)
        session = onnx_session(path, threads)
        run = lambda t: tuple(torch.from_numpy(o) for o in session.run(None, {"x": t.numpy()}))
    elif backend == "aoti":
        program, _ = export_program(model, (example,))
        run = load_package(compile_package(program, Path(out) / f"{name}.pt2")[0])
    elif backend in ("compiled", "compiled-bf16"):          # what --compile serves
        from ch13_segment.precision import prepare

        run = prepare(model, "bf16" if backend.endswith("bf16") else "fp32", batch_size=None,
                      compiled=True, cache_dir=Path(out) / "programs")
    elif backend == "int8":
        from ch13_segment.precision import prepare

        run = prepare(model, "int8", batch_size=x.shape[0], calibration=calibration)
    else:
        raise ValueError(f"unknown backend {backend!r}")
    return run, x, time.perf_counter() - start


def parity(reference, outputs):
    """(largest absolute difference over all outputs, that / the largest reference output)."""
    diff = max(float((a - b.float()).abs().max()) for a, b in zip(reference, outputs))
    scale = max(float(a.abs().max()) for a in reference)
    return diff, diff / max(scale, 1e-12)


def time_calls(run, x, warmup, repeats):
    """Median and 90th percentile of `repeats` single calls, in ms, after `warmup` calls."""
    for _ in range(warmup):
        run(x)
    ms = [1e3 * timed(CPU, lambda: run(x)) for _ in range(repeats)]
    return float(np.median(ms)), float(np.percentile(ms, 90))


def measure(name, model, x, backends, out, threads, warmup, repeats, calibration=None):
    """{backend: {median_ms, p90_ms, diff, rel_diff, export_s}} for one model, printed."""
    with torch.inference_mode():
        reference = as_tuple(model(x))
    results = {}
    for backend in backends:
        run, xb, export_s = prepare(backend, name, model, x, out, threads, calibration)
        with torch.inference_mode():
            diff, rel = parity(reference, as_tuple(run(xb)))
            median, p90 = time_calls(run, xb, warmup, repeats)
        results[backend] = {"median_ms": median, "p90_ms": p90, "diff": diff, "rel_diff": rel,
                            "export_s": export_s}
        made = f"exported in {export_s:.1f} s, " if export_s else ""
        print(f"  {backend:14s} {made}max abs diff vs eager {diff:.3g} (relative {rel:.2g}); "
              f"median {median:.2f} ms, p90 {p90:.2f} ms", flush=True)
    return results


def format_table(results, models, backends):
    """Rows: backends; per model the median ms, p90 ms and eager median / this median."""
    head = f"{'backend':36s}" + "".join(f" | {MODEL_TITLES[m] + ' ms':>14s} {'p90':>7s} "
                                        f"{'vs eager':>8s}" for m in models)
    lines = [head, "-" * len(head)]
    for backend in backends:
        row = f"{BACKEND_TITLES[backend]:36s}"
        for m in models:
            r, eager = results[m].get(backend), results[m].get("eager")
            if r is None:
                row += f" | {'-':>14s} {'-':>7s} {'-':>8s}"
                continue
            ratio = f"{eager['median_ms'] / r['median_ms']:.2f}x" if eager else "-"
            row += f" | {r['median_ms']:>14.2f} {r['p90_ms']:>7.2f} {ratio:>8s}"
        lines.append(row)
    return "\n".join(lines)


def parse_list(text, allowed, flag):
    items = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in items if t not in allowed]
    if unknown or not items:
        raise argparse.ArgumentTypeError(f"{flag}: {', '.join(unknown) or 'empty'}; choose "
                                         f"from {','.join(allowed)}")
    return items


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS),
                   type=lambda s: parse_list(s, MODELS, "--models"),
                   help="comma-separated, from %(default)s")
    p.add_argument("--backends", default=",".join(BACKENDS),
                   type=lambda s: parse_list(s, BACKENDS, "--backends"),
                   help="comma-separated, from %(default)s (eager always runs: the reference)")
    p.add_argument("--repeats", type=at_least(int, 1), default=20,
                   help="timed calls (default: %(default)s)")
    p.add_argument("--warmup", type=at_least(int, 0), default=3, help="untimed calls first")
    p.add_argument("--threads", type=at_least(int, 1), default=torch.get_num_threads(),
                   help="intra-op threads for torch and onnxruntime alike (default: %(default)s)")
    p.add_argument("--unet-size", type=at_least(int, 8), default=512,
                   help="U-Net input height and width (default: %(default)s, a CT slice)")
    p.add_argument("--cls-model", default=None,
                   help="classifier checkpoint in the book's format (default: seeded random)")
    p.add_argument("--seg-model", default=None,
                   help="segmentation checkpoint in the book's format (default: seeded random)")
    p.add_argument("--out", default=None,
                   help="folder for the exported files (default: a temporary one, removed)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    add_data_dir_argument(p)
    args = p.parse_args(argv)
    if args.unet_size % 8:
        p.error(f"--unet-size {args.unet_size}: must be a multiple of 8 (three 2x poolings)")
    args.backends = ["eager"] + [b for b in args.backends if b != "eager"]
    return args


def main(argv=None):
    args = parse_args(argv)
    # every input and output place is checked before minutes of measuring
    out = output_dir(args.out, "--out") if args.out else None
    if args.json:
        output_dir(Path(args.json).parent, "--json folder")
        if Path(args.json).is_dir():
            raise DataError(f"--json {args.json}: a folder, not a file")
    models = build_models(args.models, args.cls_model, args.seg_model, args.data_dir,
                          args.unet_size)
    calibration = calibration_data(args.backends, args.models, args.data_dir)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        results = run_all(models, args.backends, out, args.threads, args.warmup, args.repeats,
                          calibration)
    finally:
        torch.set_num_threads(threads_before)
    table = format_table(results, args.models, args.backends)
    print()
    print(table)
    if args.json:
        write_json(args.json, {"threads": args.threads, "repeats": args.repeats,
                               "unet_size": args.unet_size, "results": results}, "--json")
    return {"results": results, "table": table}


def calibration_data(backends, models, data_dir):
    """{name: precision.Calibration} for the int8 backend: crops and slices of the training
    series of the LUNA data (the synthetic sample without LUNA16), as nodule_analysis uses."""
    if "int8" not in backends:
        return {}
    from ch10_luna.dsets import locate_luna
    from ch13_segment.precision import calibration_sets, int8_unavailable

    why = int8_unavailable()
    if why:
        raise DataError(f"--backends int8: {why}")
    slices, crops, _where = calibration_sets(locate_luna(data_dir), [], batch_size=1)
    return {"cls": crops, "unet": slices}


def run_all(models, backends, out, threads, warmup, repeats, calibration=None):
    """measure() for every model, the exported files in `out` or a temporary folder."""
    print(f"batch 1 on the CPU, {threads} intra-op threads for torch and onnxruntime; "
          f"{warmup} warm-up calls, then {repeats} timed calls per figure")
    results = {}
    with tempfile.TemporaryDirectory(prefix="latency-") as tmp:
        for name, (model, x) in models.items():
            print(f"{MODEL_TITLES[name]} ({type(model).__name__}), input {list(x.shape)}:")
            results[name] = measure(name, model, x, backends, out or Path(tmp), threads,
                                    warmup, repeats, (calibration or {}).get(name))
    return results


if __name__ == "__main__":
    run_cli(main)
