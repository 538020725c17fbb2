"""How the analysis' networks run for inference: layout, bf16, static int8, compilation.

    unet = prepare(model, "fp32")                      # a channels-last copy, called like it
    cls = prepare(model, "int8", calibration=crops, cache_dir=cache)   # quantized once, cached
    logits, probs = cls(x)                             # fp32 in, the model's outputs in fp32 out

fp32 and bf16 (autocast) run a copy of the model in the channels-last layout; int8 is
post-training static quantization through PyTorch 2's export-based flow (torchao's pt2e) with
X86InductorQuantizer's recipe, extended here to Conv3d (lowered by hand to oneDNN's int8
convolution) and to the U-Net's ReLU outputs that feed a BatchNorm. Rechecked lets a fast
classifier's decisions near the threshold be the fp32 one's. nodule_analysis.py and chapter
15's latency.py use these; benchmark.py --networks measures them side by side. How the int8
flow works, and what it measured, is in NOTES.md ("Precision").
"""
import contextlib
import copy
import hashlib
import io
import logging
import os
import time
import warnings
from collections import namedtuple
from pathlib import Path

import numpy as np
import torch

from ch10_luna.dsets import CROP_IRC, LunaDataset, cached_ct, epoch_order, read_candidates
from ch10_luna.runtime import memory_format
from ch13_segment.dsets import context_slices, split_series
from ch13_segment.model import UNetWrapper
from common.ct import HU_MIN
from common.errors import DataError
from common.files import one_writer, write_bytes

PRECISIONS = ("fp32", "bf16", "int8")
KEY = "quantization_annotation"             # where pt2e quantizers keep a node's annotation
aten = torch.ops.aten
RELUS = (aten.relu.default, aten.relu_.default)


# ----------------------------------------------------------------------------- torchao
@contextlib.contextmanager
def quiet_loggers(*names, level=logging.ERROR):
    """Raise these loggers to `level` for the block, then restore them."""
    loggers = [logging.getLogger(n) for n in names]
    before = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, before):
            lg.setLevel(lv)


def import_pt2e():
    """torchao's pt2e quantization modules: (quantize_pt2e, x86_inductor_quantizer, quantizer).

    The torchao wheel carries CUDA-only extensions that a CPU torch cannot load; it logs a
    warning for each on import, and torch one about torchao's Enum registration: silenced here.
    """
    with quiet_loggers("torchao", "torch.utils._pytree"):
        import torchao.quantization.pt2e.quantize_pt2e as quantize_pt2e
        import torchao.quantization.pt2e.quantizer as quantizer
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86
    return quantize_pt2e, x86, quantizer


def int8_unavailable():
    """None when int8 can run here, else why not (one line, for a skip or an error)."""
    try:
        import_pt2e()
    except ImportError as e:
        return f"int8 needs torchao (pip install -r requirements.txt): {e}"
    if not torch.backends.mkldnn.is_available():
        return "int8 needs a torch built with oneDNN (mkldnn)"
    return None


def reduce_range():
    """True where int8 activations must keep to 7 bits: a CPU without VNNI (make_quantizer)."""
    return not torch.cpu._is_vnni_supported()


# ----------------------------------------------------------------------------- annotation
def make_quantizer():
    """X86InductorQuantizer's default recipe, plus Conv3d and the ReLU-then-BatchNorm outputs.

    The torchao Quantizer interface is a class with annotate(); this subclass runs the stock
    annotation, then annotate_extras. Activations take 7 bits (0-127) on a CPU without VNNI:
    there oneDNN multiplies u8 by s8 in pairs summed into int16 (vpmaddubsw), which saturates
    past 32767 (2 x 255 x 127 does); 2 x 127 x 127 does not.
    """
    _, x86, _ = import_pt2e()

    class ConvNetQuantizer(x86.X86InductorQuantizer):
        def annotate(self, model):
            super().annotate(model)
            annotate_extras(model.graph, self.global_config)
            return model

    q = ConvNetQuantizer()
    q.set_global(x86.get_default_x86_inductor_quantization_config(reduce_range=reduce_range()))
    return q


def annotate_extras(graph, config):
    """Annotate Conv3d (+ ReLU), MaxPool3d, and the outputs of annotated ReLUs (in place)."""
    _, _, qz = import_pt2e()
    act, weight = config.input_activation, config.weight
    for node in graph.nodes:
        if node.target is aten.conv3d.default and KEY not in node.meta:
            x, w = node.args[:2]
            relu = only_user(node)
            relu = relu if relu is not None and relu.target in RELUS else None
            node.meta[KEY] = qz.QuantizationAnnotation(
                input_qspec_map={x: act, w: weight}, _annotated=True)
            if relu is None:
                node.meta[KEY].output_qspec = act
            else:
                relu.meta[KEY] = qz.QuantizationAnnotation(output_qspec=act, _annotated=True)
        elif node.target is aten.max_pool3d.default and KEY not in node.meta:
            x = node.args[0]
            if KEY in x.meta and x.meta[KEY].output_qspec is not None:
                node.meta[KEY] = qz.QuantizationAnnotation(
                    input_qspec_map={x: act}, output_qspec=qz.SharedQuantizationSpec((x, node)),
                    _annotated=True)
    for node in graph.nodes:               # conv2d + ReLU annotated by the stock recipe
        note = node.meta.get(KEY)
        if node.target in RELUS and note is not None and note.output_qspec is None:
            note.output_qspec = act         # feeds a BatchNorm: quantize before it, not after


def only_user(node):
    users = list(node.users)
    return users[0] if len(users) == 1 else None


# ----------------------------------------------------------------------------- int8
def spatial_multiple(model):
    """What H and W of a UNetWrapper's input must be multiples of (None for other models)."""
    return 2 ** (model.unet.depth - 1) if isinstance(model, UNetWrapper) else None


def dynamic_shapes(example, multiple=None):
    """torch.export's dynamic_shapes: the batch dimension dynamic (static for an example of
    one: export would specialise it anyway), and with `multiple` also H and W of a 4-D first
    input (as multiples of it: the U-Net's poolings need that)."""
    first = {0: torch.export.Dim("batch", min=1, max=4096)} if example[0].shape[0] > 1 else {}
    if multiple is not None and example[0].dim() == 4:
        first.update({2: multiple * torch.export.Dim("h", min=1, max=4096),
                      3: multiple * torch.export.Dim("w", min=1, max=4096)})
    return (first,) + tuple(None for _ in example[1:])


def prepare_int8(model, example_inputs):
    """The exported model with observers in it (torch.export, then prepare_pt2e)."""
    quantize_pt2e, _, _ = import_pt2e()
    example = tuple(x.contiguous() for x in example_inputs)   # a view's strides become guards
    multiple = spatial_multiple(model)
    program = torch.export.export(model.eval(), example,
                                  dynamic_shapes=dynamic_shapes(example, multiple))
    prepared = quantize_pt2e.prepare_pt2e(program.module(), make_quantizer())
    prepared.meta["spatial_multiple"] = multiple
    return prepared


def calibrate(prepared, calibration_batches):
    """Run every batch (a tensor or a tuple of the model's inputs) through the observers."""
    count = 0
    with torch.no_grad():
        for batch in calibration_batches:
            prepared(*(batch if isinstance(batch, tuple) else (batch,)))
            count += 1
    if not count:
        raise ValueError("int8 calibration needs at least one batch")
    return prepared


def quantize_int8(model, example_inputs, calibration_batches):
    """The reference int8 program: exported, observed over the batches, converted.

    Runs as it stands (quantize/dequantize around fp32 kernels: the int8 numerics, not the
    speed); torch.export.save serialises it with int8 weights.
    """
    quantize_pt2e, _, _ = import_pt2e()
    prepared = calibrate(prepare_int8(model, example_inputs), calibration_batches)
    converted = drop_unused_attributes(quantize_pt2e.convert_pt2e(prepared))
    converted.meta["spatial_multiple"] = prepared.meta["spatial_multiple"]
    return converted


def drop_unused_attributes(gm):
    """Delete the parameters and buffers no get_attr node reads (in place): convert_pt2e
    leaves the fp32 weights beside their int8 copies, and a saved program would keep both."""
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for name, _ in list(gm.named_parameters()) + list(gm.named_buffers()):
        if name not in used:
            owner, _, attr_name = name.rpartition(".")
            delattr(gm.get_submodule(owner) if owner else gm, attr_name)
    return gm


def observer_ranges(prepared):
    """{observer name: (min, max)} of a prepared model's activation observers."""
    return {name: (float(m.min_val), float(m.max_val)) for name, m in prepared.named_modules()
            if hasattr(m, "min_val") and m.min_val.dim() == 0}


def activation_scales(converted):
    """The scales of the quantize_per_tensor nodes of a converted program, in graph order."""
    q = torch.ops.quantized_decomposed.quantize_per_tensor.default
    return [float(n.args[1]) for n in converted.graph.nodes if n.target is q]


def attr(gm, node):
    """The tensor a get_attr node names."""
    value = gm
    for part in node.target.split("."):
        value = getattr(value, part)
    return value


def lower_conv3d(converted):
    """Replace each quantized Conv3d (+ ReLU) and MaxPool3d by oneDNN int8 / uint8 kernels.

    Pattern, after convert_pt2e: dequantize_per_tensor(u8) -> conv3d(., dequantize_per_channel
    (int8 weight)) -> [relu] -> quantize_per_tensor. It becomes qconv_pointwise on the u8 input
    with a prepacked weight, writing u8 at the output scale (zero point 0 after a ReLU, so the
    clamp at 0 is the ReLU) or fp32 when nothing quantizes the output.
    dequantize -> max_pool3d -> quantize with the same parameters becomes max_pool_uint8.
    Returns (the graph module, changed in place, the number of convolutions lowered).
    """
    qd = torch.ops.quantized_decomposed
    gm, graph, lowered = converted, converted.graph, 0
    for node in list(graph.nodes):
        if node.target is aten.conv3d.default:
            lowered += lower_one_conv3d(gm, node, qd)
    for node in list(graph.nodes):
        if node.target is aten.max_pool3d.default:
            lower_one_max_pool(graph, node, qd)
    graph.eliminate_dead_code()
    gm.recompile()
    return gm, lowered


def lower_one_conv3d(gm, conv, qd):
    """lower_conv3d for one conv3d node: 1 when replaced, 0 when it is not quantized."""
    x_dq, w_dq = conv.args[:2]
    if x_dq.target is not qd.dequantize_per_tensor.default or \
            w_dq.target is not qd.dequantize_per_channel.default:
        return 0
    defaults = (None, [1], [0], [1], 1)                 # aten.conv3d's bias .. groups
    bias, stride, padding, dilation, groups = (tuple(conv.args[2:]) + defaults[len(conv.args) - 2:])
    stride, padding, dilation = ([v[0]] * 3 if len(v) == 1 else list(v)
                                 for v in (stride, padding, dilation))
    qx, x_scale, x_zp = x_dq.args[:3]
    w_int8, w_scales, w_zps = (attr(gm, n) for n in w_dq.args[:3])
    packed = torch.ops.onednn.qconv_prepack(w_int8, w_scales, x_scale, x_zp, stride, padding,
                                            dilation, groups, None)
    name = f"_qconv3d_weight_{conv.name}"
    gm.register_buffer(name, packed)
    for n, t in ((f"{name}_scales", w_scales), (f"{name}_zero_points", w_zps)):
        gm.register_buffer(n, t)
    after = only_user(conv)
    relu = after if after is not None and after.target in RELUS else None
    q = only_user(relu) if relu is not None else after
    quantized_out = q is not None and q.target is qd.quantize_per_tensor.default and \
        (relu is None or q.args[2] == 0)
    if relu is not None and not quantized_out:
        return 0                                       # a ReLU the kernel cannot fuse
    out_scale, out_zp, out_dtype = ((q.args[1], q.args[2], torch.uint8) if quantized_out
                                    else (1.0, 0, torch.float32))
    graph = gm.graph
    with graph.inserting_before(q if quantized_out else after):
        args = (qx, x_scale, x_zp, graph.get_attr(name), graph.get_attr(f"{name}_scales"),
                graph.get_attr(f"{name}_zero_points"), bias, stride, padding, dilation, groups,
                out_scale, out_zp, out_dtype, "none", [], "")
        new = graph.call_function(torch.ops.onednn.qconv_pointwise.default, args)
    (q if quantized_out else conv).replace_all_uses_with(new)
    for old in (q if quantized_out else None, relu, conv):   # in-place relu_ is never dead code
        if old is not None and not old.users:
            graph.erase_node(old)
    return 1


def lower_one_max_pool(graph, pool, qd):
    """dequantize -> max_pool3d(2) -> quantize (same parameters) becomes max_pool_uint8."""
    dq, q = pool.args[0], only_user(pool)
    if dq.target is not qd.dequantize_per_tensor.default or q is None or \
            q.target is not qd.quantize_per_tensor.default or tuple(q.args[1:]) != \
            tuple(dq.args[1:]) or list(pool.args[1]) not in ([2], [2, 2, 2]) or \
            list(pool.args[2] if len(pool.args) > 2 else pool.args[1]) not in ([2], [2, 2, 2]):
        return
    with graph.inserting_before(q):
        new = graph.call_function(max_pool_uint8, (dq.args[0],))
    q.replace_all_uses_with(new)


def max_pool_uint8(x):
    """2x2x2 max-pool of an (N, C, D, H, W) uint8 tensor stored channels-last: three maxima of
    strided views (aten's max_pool3d refuses channels-last uint8, and is slow on it)."""
    x = x.contiguous(memory_format=torch.channels_last_3d)
    v = x.permute(0, 2, 3, 4, 1)                               # (N, D, H, W, C), contiguous
    d, h, w = (s - s % 2 for s in v.shape[1:4])              # floor, as max_pool3d does
    v = v[:, :d, :h, :w]
    v = torch.maximum(v[:, 0::2], v[:, 1::2])
    v = torch.maximum(v[:, :, 0::2], v[:, :, 1::2])
    v = torch.maximum(v[:, :, :, 0::2], v[:, :, :, 1::2])
    return v.permute(0, 4, 1, 2, 3)                           # (N, C, D/2, H/2, W/2)


# ----------------------------------------------------------------------------- callables
def as_float(out):
    """The model's output structure with every tensor in fp32."""
    if isinstance(out, torch.Tensor):
        return out.float()
    return type(out)(as_float(o) for o in out)


def fixed_batch(run, batch_size):
    """`run` for any batch size, called only with `batch_size` rows (padded with the last
    row, or split): a shape-specialised program then never recompiles for a short batch."""
    def call(*xs):
        n = xs[0].shape[0]
        outs = []
        for start in range(0, n, batch_size):
            part = [x[start:start + batch_size] for x in xs]
            short = batch_size - part[0].shape[0]
            if short:
                part = [torch.cat([p, p[-1:].expand(short, *p.shape[1:])]) for p in part]
            outs.append(run(*part))
        first = outs[0]
        if isinstance(first, torch.Tensor):
            return torch.cat(outs)[:n]
        return type(first)(torch.cat(parts)[:n] for parts in zip(*outs))
    return call


def compiled_runner(module, batch_size, freezing=True):
    """torch.compile(module) for fixed shapes, called with `batch_size` rows (fixed_batch).

    Freezing (weights as constants) is what lets inductor prepack weights and lower a
    quantized program to oneDNN's int8 kernels; it is set around every call, since a new
    input shape compiles anew at that call (torch.compile's `options` did not reach the
    weight-prepack pass in torch 2.13: "UnsupportedOperatorException: onednn.qconv_prepack").
    """
    compiled = torch.compile(module, dynamic=False)

    def run(*xs):
        with torch._inductor.config.patch(freezing=freezing):
            return compiled(*xs)
    return fixed_batch(run, batch_size)


def int8_runner(program, example_inputs, compiled=True):
    """A callable for a quantize_int8 program (or one load_int8 read back): fp32 in, fp32 out.

    compiled: LunaModel-like programs (Conv3d) through lower_conv3d, then torch.compile
    without freezing (its qlinear prepack does not run on the lowered graph), fed channels-last
    crops (the lowered convolutions' own layout); 2-D ones through torch.compile with
    freezing. Otherwise the reference program as it stands.
    """
    layout = None
    if compiled and any(n.target is aten.conv3d.default for n in program.graph.nodes):
        lowered, _count = lower_conv3d(copy.deepcopy(program))     # the program stays intact
        program = compiled_runner(lowered, example_inputs[0].shape[0], freezing=False)
        layout = torch.channels_last_3d
    elif compiled:
        program = compiled_runner(program, example_inputs[0].shape[0])

    def run(*xs):
        if layout is not None:
            xs = [x.contiguous(memory_format=layout) if x.dim() == 5 else x for x in xs]
        with torch.no_grad():
            return as_float(program(*xs))
    return run


def float_runner(model, precision, fmt=None):
    """fp32 or bf16 (autocast) inference of a copy of `model` in memory layout `fmt` (default:
    runtime.memory_format's, channels-last on a CPU); the model itself is left as it was."""
    module = inference_module(model, precision, fmt)

    def run(x):
        with torch.no_grad():
            return module(x)
    return run


def inference_module(model, precision, fmt=None):
    """An eval-mode copy of `model` wrapped in Inference: its weights and inputs in layout
    `fmt` (default: runtime.memory_format's for the model's device and precision), bf16
    autocast for "bf16", fp32 outputs."""
    device = next(model.parameters()).device
    spatial_dims = 2 if isinstance(model, UNetWrapper) else 3
    fmt = fmt or memory_format(device, precision == "bf16", spatial_dims)
    copied = copy.deepcopy(model).eval().requires_grad_(False).to(memory_format=fmt)
    return Inference(copied, fmt, precision == "bf16").eval()


def whole_slices(run, multiple):
    """`run` for (N, C, H, W) slices of any H and W: rows and columns padded with air up to the
    U-Net's `multiple`, the padding cropped off its output."""
    def call(x):
        rows, cols = x.shape[-2:]
        return run(pad_slices(x, multiple))[..., :rows, :cols]
    return call


class Rechecked:
    """A classifier whose decisions near `threshold` are the exact one's: `fast(x)` for every
    crop, then `exact(x)` again for those whose P(class 1) lies within `margin` of it. Called
    like the model ((logits, probs) out); `count` says how many crops were re-scored."""

    def __init__(self, fast, exact, threshold, margin):
        self.fast, self.exact, self.threshold, self.margin = fast, exact, threshold, margin
        self.count = 0

    def __call__(self, x):
        logits, probs = self.fast(x)
        near = (probs[:, 1] - self.threshold).abs() < self.margin
        n = int(near.sum())
        if n:
            # A lone crop goes as a batch of two: batch 1 is a slow path of oneDNN's fp32 3-D
            # convolution (chapter 15's NOTES.md, "Latency").
            again = x[near] if n > 1 else x[near].expand(2, *x.shape[1:])
            exact_logits, exact_probs = self.exact(again)
            logits[near], probs[near] = exact_logits[:n], exact_probs[:n]
            self.count += n
        return logits, probs


def prepare(model, precision="fp32", *, batch_size=4, calibration=None, cache_dir=None,
            compiled=False, fmt=None):
    """`model` ready for inference, called like it: fp32 inputs -> its outputs in fp32.

    fp32 and bf16: float_runner, or with `compiled` the same compiled ahead of time by
    inductor with freezing (aot_runner: kept in `cache_dir`); int8: the model quantized
    over `calibration` (a Calibration: its batches, and a key naming them) and run by
    int8_runner, the program kept in `cache_dir` so that a later run skips the quantization.
    A U-Net takes whole slices of any size (whole_slices). CPU only for int8.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if precision == "int8":
        with warnings.catch_warnings():             # torch's own pytree notice, not ours
            warnings.filterwarnings("ignore", message=".*LeafSpec", category=FutureWarning)
            run = int8_runner(*int8_program(model, batch_size, calibration, cache_dir))
    elif compiled:
        run = aot_runner(model, precision, batch_size, cache_dir, fmt)
    else:
        run = float_runner(model, precision, fmt)
    multiple = spatial_multiple(model)
    return whole_slices(run, multiple) if multiple else run


class Inference(torch.nn.Module):
    """What float_runner runs, as a module torch.export takes: the input in layout `fmt`, the
    model under bf16 autocast when `bf16`, its outputs in fp32."""

    def __init__(self, model, fmt, bf16):
        super().__init__()
        self.model, self.fmt, self.bf16 = model, fmt, bf16

    def forward(self, x):
        x = x.contiguous(memory_format=self.fmt)
        with torch.autocast(x.device.type, torch.bfloat16, enabled=self.bf16):
            return as_float(self.model(x))


def aot_runner(model, precision, batch_size, cache_dir=None, fmt=None, announce=print):
    """float_runner's work compiled ahead of time by AOTInductor, with inductor's freezing
    (the weights constants: BatchNorm folded into the convolutions, ReLU fused), for batches of
    `batch_size` (fixed_batch pads a short one), or with `batch_size` None for batches as they
    come (a server's). A program per input shape, compiled at its first call and kept in
    `cache_dir` (by weights, precision, shape, torch and CPU), so a later run loads it at once.
    The batch is never symbolic: in torch 2.13 a program exported with a symbolic batch gave
    LunaModel wrong outputs under freezing. Where compiling fails (no C++ compiler, an operator
    inductor cannot take), one warning line, and that shape runs eagerly."""
    device = next(model.parameters()).device
    module = inference_module(model, precision, fmt)      # exported, and the eager fallback
    key = weights_key(model, precision, torch.__version__, device.type, device_target(device))
    programs = {}

    def eager(x):
        with torch.no_grad():
            return module(x)

    def run(x):
        shape = tuple(x.shape)
        if shape not in programs:
            name = f"{type(model).__name__}-{precision}-{'x'.join(map(str, shape))}-{key}"
            programs[shape] = load_or_compile(module, x, cache_dir, name, eager, announce)
        with torch.no_grad():
            return programs[shape](x)
    return fixed_batch(run, batch_size) if batch_size else run


def weights_key(model, *parts):
    """16 hex digits naming what was made from `model`: its weights (names and bytes) and
    `parts` (for a compiled program: the precision, torch's version and the device it was
    compiled for; for an int8 one: the calibration data and the batch size)."""
    key = hashlib.sha1(repr(parts).encode())
    for name, tensor in model.state_dict().items():
        key.update(name.encode())
        key.update(tensor.detach().cpu().numpy().tobytes())
    return key.hexdigest()[:16]


def device_target(device):
    """What a compiled program is specific to: the GPU's name, or the CPU's vector ISA."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from torch._inductor import cpu_vec_isa

    return str(cpu_vec_isa.pick_vec_isa())


def load_or_compile(module, example, cache_dir, name, eager, announce=print):
    """The AOTInductor program of `module` for inputs of `example`'s shape: loaded from
    `cache_dir`/`name`.pt2, else exported, compiled with freezing and saved there
    (atomically); `eager` (with a warning line) where that fails. Of several processes first
    using the cache at once (torchrun's ranks), one compiles while the others wait for its
    program and load it (common.files.one_writer)."""
    path = Path(cache_dir) / f"{name}.pt2" if cache_dir is not None else None
    existed = path is not None and path.is_file()
    if existed:
        program = load_program(path, announce)
        if program is not None:
            return program
    with contextlib.ExitStack() as lock:
        if path is not None:
            with contextlib.suppress(DataError):       # an unwritable cache: compile, warn
                lock.enter_context(one_writer(path, "compiled program cache"))
        if not existed and path is not None and path.is_file():     # made while this waited
            program = load_program(path, announce)
            if program is not None:
                return program
        return compile_program(module, example, path, name, eager, announce)


def load_program(path, announce=print):
    """The AOTInductor program kept at `path`; None (with a warning line) when it cannot load."""
    try:
        return torch._inductor.aoti_load_package(str(path))
    except Exception as e:                        # a damaged or foreign file: compile anew
        announce(f"warning: {path}: not a loadable program ({type(e).__name__}); compiling "
                 "again")
        return None


def compile_program(module, example, path, name, eager, announce=print):
    """load_or_compile's compilation: `module` exported for `example`'s shape, compiled with
    freezing, saved at `path` (None: a temporary folder) and loaded; `eager` where that fails."""
    import tempfile

    started, kept = time.perf_counter(), path is not None
    try:
        # Exported outside inference mode (a caller's torch.inference_mode changes how
        # export traces views), from a copy of the example made there.
        with quiet_loggers("torch"), warnings.catch_warnings(), torch.inference_mode(False):
            warnings.simplefilter("ignore")
            program = torch.export.export(module, (example.clone(),))
            buffer = io.BytesIO()
            torch._inductor.aoti_compile_and_package(
                program, package_path=buffer, inductor_configs={"freezing": True})
        if path is None:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"{name}.pt2"
                path.write_bytes(buffer.getvalue())
                compiled = torch._inductor.aoti_load_package(str(path))
        else:
            write_bytes(path, buffer.getvalue(), "compiled program cache")
            compiled = torch._inductor.aoti_load_package(str(path))
    except Exception as e:                        # no compiler, an operator it cannot take
        announce(f"warning: --compile: {name.split('-')[0]} could not be compiled here "
                 f"({type(e).__name__}: {str(e).strip().splitlines()[0][:120] if str(e) else ''})"
                 "; it runs eagerly")
        return eager
    announce(f"compiled {name.rsplit('-', 1)[0]} in {time.perf_counter() - started:.1f} s"
             + (f" (kept in {path.parent} for later runs)" if kept else ""))
    return compiled


# What int8 calibrates on: `batches()` gives the input batches, `key` names them (the cache's).
Calibration = namedtuple("Calibration", ["key", "batches"])


def int8_program(model, batch_size, calibration, cache_dir=None):
    """(quantized program, example inputs of `batch_size` rows): read from `cache_dir` when a
    run quantized the same weights on the same calibration data before, else quantized (and
    saved there through the atomic writer)."""
    why = int8_unavailable()
    if why:
        raise RuntimeError(why)
    path = None
    if cache_dir is not None:
        key = weights_key(model, calibration.key, batch_size, reduce_range())
        path = Path(cache_dir) / f"{type(model).__name__}-{key}.pt2"
    if path is not None and path.is_file():
        return load_int8(path), (torch.zeros(batch_size),)    # only the batch size is read
    # Of several processes first using the cache at once, one quantizes; the others wait.
    with one_writer(path, "int8 model cache") if path is not None else contextlib.nullcontext():
        if path is not None and path.is_file():                # made while this one waited
            return load_int8(path), (torch.zeros(batch_size),)
        batches = calibration.batches()
        example = (batches[0][:1].expand(batch_size, *batches[0].shape[1:]).contiguous(),)
        program = quantize_int8(model, example, batches)
        if path is not None:
            buffer = io.BytesIO()
            save_int8(program, example, buffer)
            write_bytes(path, buffer.getvalue(), "int8 model cache")
    return program, example


def small_example(example_inputs, multiple=None):
    """The example inputs cut to 2 rows (and, with `multiple`, 4 * multiple rows and columns):
    torch.export.save keeps the example in the file, so this keeps it small. Two, not one: a
    dynamic dimension seen at size 1 is specialised. Cloned: a view would save all its storage."""
    first = example_inputs[0][:2]
    if multiple is not None and first.dim() == 4:
        first = first[:, :, :4 * multiple, :4 * multiple]
    return tuple(x.clone() for x in (first,) + tuple(x[:2] for x in example_inputs[1:]))


def save_exported(module, example_inputs, path, multiple=None):
    """torch.export.save of `module` (batch dynamic, H and W too with `multiple`) to a path or
    a file object, with `multiple` stored beside it; the bytes written."""
    example = small_example(example_inputs, multiple)
    exported = torch.export.export(module, example,
                                   dynamic_shapes=dynamic_shapes(example, multiple))
    extra = {"spatial_multiple": str(multiple)}
    if hasattr(path, "write"):
        start = path.tell()
        torch.export.save(exported, path, extra_files=extra)
        path.seek(0, io.SEEK_END)                     # save leaves the position at its start
        return path.tell() - start
    torch.export.save(exported, path, extra_files=extra)
    return os.path.getsize(path)


def save_int8(program, example_inputs, path):
    """Write a quantize_int8 program (int8 weights and its quantization parameters) with
    torch.export.save, so that a later run skips the calibration; `path` may be a file object.
    Returns the bytes written."""
    return save_exported(program, example_inputs, path, program.meta.get("spatial_multiple"))


def load_int8(path):
    """The program save_int8 wrote, for int8_runner."""
    import_pt2e()                           # registers the quantized_decomposed ops it holds
    extra = {"spatial_multiple": ""}
    with warnings.catch_warnings():                 # torch's own pytree notice, not ours
        warnings.filterwarnings("ignore", message=".*LeafSpec", category=FutureWarning)
        program = torch.export.load(path, extra_files=extra).module()
    program.meta["spatial_multiple"] = (None if extra["spatial_multiple"] == "None"
                                        else int(extra["spatial_multiple"]))
    return program


# ----------------------------------------------------------------------------- calibration data
def calibration_sets(luna, analysed, batch_size, val_stride=10, fold=None):
    """(slices, crops, where): the int8 Calibrations of the U-Net and of the classifiers, drawn
    from the training series of `luna` (the split of `val_stride` or `fold`) or, where there are
    none (a data root holding only the CTs analysed), from the `analysed` series themselves;
    `where` says which, for the log line."""
    train_uids, _val = split_series(luna.series, val_stride, fold)
    uids = train_uids or sorted(analysed)
    if not uids:
        raise DataError(f"--precision int8: no series under {luna.root} to calibrate on; use "
                        "--precision bf16")
    where = ("the training series" if train_uids else
             f"the analysed series (no training series under {luna.root})")
    return (Calibration(repr((str(luna.root), "slices", uids)),
                        lambda: calibration_slices(luna, uids, batch_size=batch_size)),
            Calibration(repr((str(luna.root), "crops", uids)),
                        lambda: calibration_crops(luna, uids, batch_size=batch_size)), where)


def calibration_crops(luna, uids, count=64, batch_size=32, seed=0, crop_irc=CROP_IRC):
    """Batches of (B, 1, 32, 48, 48) HU crops around the candidates of the series `uids`,
    nodules and non-nodules alternating (chapter 12's balanced order) when both are there,
    `count` crops in all. A DataError when those series have no candidate."""
    uids = set(uids)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")            # candidates of series not on disk: not ours
        candidates = [c for c in read_candidates(luna) if c.series_uid in uids]
    if not candidates:
        raise DataError(f"--precision int8: no candidate of {luna.candidates_csv} lies in the "
                        f"{len(uids)} series to calibrate on; use --precision bf16")
    labels = [c.is_nodule for c in candidates]
    order = epoch_order(labels, count, balanced=0 < sum(labels) < len(labels), seed=seed)
    ds = LunaDataset(candidates, luna.series, crop_irc)
    crops = torch.stack([ds[int(i)][0] for i in order])
    return list(crops.split(batch_size))


def calibration_slices(luna, uids, count=16, batch_size=8, seed=0, multiple=4):
    """Batches of (B, 7, R, C) HU slices with their context from the series `uids`, as
    nodule_analysis feeds the U-Net (rows and columns padded with air to `multiple`); slices
    of one CT per batch (CTs may differ in size), `count` slices in all, spread over the CTs."""
    rng = np.random.default_rng(seed)
    uids = [uids[i] for i in rng.permutation(len(uids))]
    per_ct = max(1, -(-count // len(uids)))
    batches, left = [], count
    for uid in uids:
        voxels = cached_ct(luna.series[uid]).voxels
        picks = np.sort(rng.choice(voxels.shape[0], min(per_ct, left, voxels.shape[0]),
                                   replace=False))
        slices = torch.stack([pad_slices(torch.from_numpy(context_slices(voxels, int(i))),
                                         multiple) for i in picks])
        batches.extend(slices.split(batch_size))
        left -= len(picks)
        if left <= 0:
            break
    return batches


def pad_slices(x, multiple):
    """(..., R, C) padded with air (HU_MIN) at the bottom and right up to `multiple`."""
    pad_r, pad_c = -x.shape[-2] % multiple, -x.shape[-1] % multiple
    return torch.nn.functional.pad(x, (0, pad_c, 0, pad_r), value=HU_MIN) if pad_r or pad_c \
        else x
