"""Chapter 15: export the LUNA classifier to ONNX and run it with onnxruntime.

    python ch15_deploy/export_onnx.py                    # the book's classifier checkpoint
    python ch15_deploy/export_onnx.py --random-weights   # without it

The book called torch.onnx.export with a dummy input, which traced the model with the
TorchScript machinery. Current PyTorch exports through torch.export instead (`dynamo=True`, the
default since 2.9, translated to ONNX by onnxscript); this script asks for it and falls back to
the TorchScript-based exporter (`dynamo=False`) only if that fails, and says so. The batch
dimension is left dynamic, so the file serves any batch size. The weights are stored inside the
.onnx file (external_data=False: the model is 0.9 MB). onnxruntime then runs it without PyTorch,
and the script prints the largest difference from the eager model on the book's crop (or a
random HU-like crop when the book's is absent) and on a batch of 3.
"""
import argparse
import io
import time
import warnings

import numpy as np
import torch

from ch15_deploy.classifier import example_crop, hu_like_crop, load_classifier, model_arguments
from ch15_deploy.model_files import quiet_torch_loggers
from common.errors import DataError, run_cli
from common.files import output_dir, runs_dir, write_bytes

INPUT_NAMES, OUTPUT_NAMES = ["crop"], ["logits", "probs"]


def export_luna(model, path, example=None, announce=print):
    """Write LunaModel to an .onnx file with a dynamic batch; returns the exporter used."""
    if example is None:
        example = torch.stack([hu_like_crop(0), hu_like_crop(1)])
    return export_model(model, path, example, INPUT_NAMES, OUTPUT_NAMES, announce)


def export_model(model, path, example, input_names, output_names, announce=print):
    """Any one-input model to .onnx, batch dimension dynamic; returns the exporter used.

    The program is serialized in memory and written whole or not at all (write_bytes).
    """
    model.eval().requires_grad_(False)
    # An example batch of 1 would let torch.export specialize the batch size to 1: use >= 2.
    if example.shape[0] < 2:
        example = example.repeat(2, *[1] * (example.dim() - 1))
    try:
        # "torchvision is not installed" from the registration logger: not used here
        with warnings.catch_warnings(), \
                quiet_torch_loggers("torch.onnx._internal.exporter._registration"):
            warnings.filterwarnings("ignore", message=".*LeafSpec", category=FutureWarning)
            program = torch.onnx.export(model, (example,), None, dynamo=True,
                                        input_names=input_names, output_names=output_names,
                                        dynamic_shapes=({0: torch.export.Dim("batch")},),
                                        verbose=False)
        write_bytes(path, program.model_proto.SerializeToString(), "ONNX file")
        return "dynamo"
    except DataError:                                 # the file could not be written: no retry
        raise
    except Exception as e:                            # any failure of the new path: say which
        announce(f"torch.onnx.export(dynamo=True) failed ({type(e).__name__}: "
                 f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}); "
                 "falling back to the TorchScript-based exporter (dynamo=False)")
    buffer = io.BytesIO()
    torch.onnx.export(model, (example,), buffer, dynamo=False, input_names=input_names,
                      output_names=output_names,
                      dynamic_axes={name: {0: "batch"} for name in input_names + output_names})
    write_bytes(path, buffer.getvalue(), "ONNX file")
    return "torchscript"


def onnx_session(path, threads=None):
    """An onnxruntime session on the CPU for the exported file (`threads`: intra-op threads)."""
    import onnxruntime as ort  # only this script needs it

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session, x):
    """(logits, probs) as tensors from onnxruntime for a (N, 1, 32, 48, 48) batch."""
    logits, probs = session.run(OUTPUT_NAMES, {INPUT_NAMES[0]: x.numpy().astype(np.float32)})
    return torch.from_numpy(logits), torch.from_numpy(probs)


def compare(model, session, x):
    """Largest absolute differences between eager and onnxruntime: (logits, probs)."""
    with torch.inference_mode():
        eager = model(x)
    ort_out = run_onnx(session, x)
    return tuple(float((a - b).abs().max()) for a, b in zip(eager, ort_out))


def describe(path):
    """Opset and the input/output names and shapes, read back with the onnx package."""
    import onnx

    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
    opset = max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    return (f"opset {opset}; inputs {[(v.name, dims(v)) for v in m.graph.input]}; "
            f"outputs {[(v.name, dims(v)) for v in m.graph.output]}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                parents=[model_arguments()])
    p.add_argument("--out", default=runs_dir("ch15"),
                   help="folder for luna.onnx (default: the repository's runs/ch15)")
    args = p.parse_args(argv)
    model = load_classifier(args.model, args.data_dir, args.random_weights)
    crop, source = example_crop(args.data_dir)
    out = output_dir(args.out, "--out")        # every input and the output checked before work
    x = crop.unsqueeze(0)                                             # (1, 1, 32, 48, 48)
    path = out / "luna.onnx"
    start = time.perf_counter()
    exporter = export_luna(model, path, torch.cat([x, x.flip(-1)]))
    seconds = time.perf_counter() - start
    print(f"exported with the {exporter} exporter in {seconds:.1f} s: {path} "
          f"({path.stat().st_size / 1024:.0f} KiB)")
    print(describe(path))
    session = onnx_session(path)
    diff = compare(model, session, x)
    batch = torch.stack([crop, crop.flip(-2), hu_like_crop(2)])        # batch of 3
    batch_diff = compare(model, session, batch)
    p_ort = float(run_onnx(session, x)[1][0, 1])
    print(f"on {source}: P(nodule) onnxruntime {p_ort:.4g}")
    print(f"max abs difference onnxruntime vs eager: logits {diff[0]:.3g}, probs {diff[1]:.3g}; "
          f"batch of 3: logits {batch_diff[0]:.3g}, probs {batch_diff[1]:.3g}")
    with torch.inference_mode():
        scale = float(model(batch)[0].abs().max())
    print(f"(the largest logit is {scale:.3g}: float32 differences grow with it; an untrained "
          "model's run into the hundreds)" if args.random_weights else
          f"(the largest logit is {scale:.3g})")
    return {"path": path, "exporter": exporter, "diff": diff, "batch_diff": batch_diff,
            "prob_nodule": p_ort}


if __name__ == "__main__":
    run_cli(main)
