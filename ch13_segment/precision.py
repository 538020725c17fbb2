"""Chapters 13-15: the classifier and the U-Net for inference in fp32, bf16 and static int8.

    python ch13_segment/precision.py                     # the side-by-side table: ~6 minutes
    python ch13_segment/precision.py --models cls --repeats 5
    python ch13_segment/precision.py --calibration ct    # calibrated on the measured CT

    run = prepare_model(model, "int8", (x,), calibration_batches=calibration_crops(luna))
    logits, probs = run(x)             # fp32 in, the model's own outputs in fp32 out

fp32 is the model in the channels-last layout (faster for these convolutions on a CPU, see
chapter 15's latency.py); bf16 adds bf16 autocast, as nodule_analysis --amp does. int8 is
post-training static quantization through PyTorch 2's export-based flow (torchao's pt2e):
torch.export, prepare_pt2e with X86InductorQuantizer's recipe (uint8 activations per tensor
from histogram observers, int8 weights per output channel), a calibration pass over crops or
slices of the training series, convert_pt2e. Two gaps in that recipe are filled here:

- X86InductorQuantizer quantizes Conv1d/Conv2d and Linear, not Conv3d, and inductor lowers
  quantized 2-D convolutions only ("Only support conv1d/2d now" in its weight-prepack pass), so
  for LunaModel (eight Conv3d) the stock flow quantizes only the 2-unit linear head. Here
  Conv3d + ReLU and MaxPool3d are annotated too, and lower_conv3d replaces each quantized
  Conv3d in the converted graph by the oneDNN int8 convolution that inductor uses for 2-D
  (onednn.qconv_prepack / qconv_pointwise, which take 5-D tensors), with a uint8 output whose
  zero point 0 is the ReLU; the max-pools then run on the uint8 tensors (max commutes with the
  monotone quantization). The result runs through torch.compile (without freezing), which
  fuses the rest (input batch norm and quantization, the uint8 pools, the head).
- In the book's U-Net each convolution's ReLU feeds a BatchNorm, which the recipe leaves in
  fp32, so every int8 convolution wrote an fp32 map (four times the bytes) and was slower than
  bf16. Here those ReLU outputs are quantized as well, so inductor fuses the quantized
  convolution with its ReLU and uint8 output, and dequantize-BatchNorm-quantize into one
  elementwise pass. The U-Net then runs through torch.compile with freezing (the int8 oneDNN
  kernels); ConvTranspose2d stays fp32 (neither the quantizer nor inductor covers it).

The prepared callables map fp32 inputs to fp32 outputs of the model's own structure (LunaModel:
(logits, probs), UNetWrapper: an (N, 1, H, W) probability map), so nodule_analysis and
latency.py can swap them for the model. The int8 ones are shape-specialised: batches smaller
than the example's are padded to it, larger ones are split, and the compiled U-Net recompiles
once per new slice size. Quantizing takes a while (the calibration's histograms, and a fixed
~10 s in convert_pt2e, whose QAT conv-bn pass exports 96 patterns whenever a graph holds a
batch norm): save_int8 / load_int8 keep a quantized program for later runs.

The table (main) times every variant on one batch in interleaved rounds and scores agreement
with fp32 on a real CT: the U-Net on all its slices, the classifier on crops around the
candidates the fp32 U-Net finds there; calibration comes from LUNA's training series (the
synthetic sample's when LUNA16 is absent, a different distribution from the real CT).
"""
import argparse
import contextlib
import copy
import io
import logging
import os
import platform
import statistics
import time

import numpy as np
import torch

from ch10_luna.dsets import (
    CROP_IRC,
    LunaDataset,
    cached_ct,
    epoch_order,
    locate_luna,
    read_candidates,
    split_by_series,
)
from ch10_luna.runtime import keep_freed_memory
from ch13_segment.dsets import context_slices, split_series
from ch13_segment.model import UNetWrapper
from common.ct import HU_MIN, load_ct
from common.data import add_data_dir_argument, book_file, data_root
from common.errors import run_cli

PRECISIONS = ("fp32", "bf16", "int8")
REAL_CT = "p1ch4/volumetric-dicom/2-LUNG 3.0  B70f-04083"
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


# ----------------------------------------------------------------------------- annotation
def make_quantizer():
    """X86InductorQuantizer's default recipe, plus Conv3d and the ReLU-then-BatchNorm outputs.

    The torchao Quantizer interface is a class with annotate(); this subclass runs the stock
    annotation, then annotate_extras.
    """
    _, x86, _ = import_pt2e()

    class ConvNetQuantizer(x86.X86InductorQuantizer):
        def annotate(self, model):
            super().annotate(model)
            annotate_extras(model.graph, self.global_config)
            return model

    q = ConvNetQuantizer()
    q.set_global(x86.get_default_x86_inductor_quantization_config())
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


def memory_format(x):
    return torch.channels_last_3d if x.dim() == 5 else torch.channels_last


def fixed_batch(run, batch_size):
    """`run` for any batch size, called only with `batch_size` rows (padded with the last
    row, or split): a shape-specialised int8 program then never recompiles for a short batch."""
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
    without freezing (its qlinear prepack does not run on the lowered graph); 2-D ones
    through torch.compile with freezing. Otherwise the reference program as it stands.
    """
    if compiled and any(n.target is aten.conv3d.default for n in program.graph.nodes):
        lowered, _count = lower_conv3d(copy.deepcopy(program))     # the program stays intact
        program = compiled_runner(lowered, example_inputs[0].shape[0], freezing=False)
    elif compiled:
        program = compiled_runner(program, example_inputs[0].shape[0])

    def run(*xs):
        with torch.no_grad():
            return as_float(program(*xs))
    return run


def prepare_model(model, precision, example_inputs, calibration_batches=None, compiled=True):
    """A callable: fp32 inputs -> the model's outputs in fp32, at `precision`.

    fp32 and bf16 run a channels-last copy of `model` (bf16 under autocast), through
    torch.compile when `compiled`, else eagerly. int8 quantizes the model (quantize_int8, over
    calibration_batches: an iterable of input batches, e.g. calibration_crops or
    calibration_slices) and runs it through int8_runner. The model itself is left as it was.
    Compiled callables are specialised to the example's batch size (see fixed_batch).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if precision == "int8":
        why = int8_unavailable()
        if why:
            raise RuntimeError(why)
        if calibration_batches is None:
            raise ValueError("int8 needs calibration_batches")
        return int8_runner(quantize_int8(model, example_inputs, calibration_batches),
                           example_inputs, compiled)
    fmt = memory_format(example_inputs[0])
    copied = copy.deepcopy(model).eval().requires_grad_(False).to(memory_format=fmt)
    autocast = precision == "bf16"

    def forward(*xs):
        xs = [x.contiguous(memory_format=fmt) if x.dim() in (4, 5) else x for x in xs]
        with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            return as_float(copied(*xs))
    if compiled:
        forward = compiled_runner(forward, example_inputs[0].shape[0])

    def run(*xs):
        with torch.no_grad():
            return forward(*xs)
    return run


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
    program = torch.export.load(path, extra_files=extra).module()
    program.meta["spatial_multiple"] = (None if extra["spatial_multiple"] == "None"
                                        else int(extra["spatial_multiple"]))
    return program


# ----------------------------------------------------------------------------- calibration data
def calibration_crops(luna, count=64, batch_size=32, val_stride=10, seed=0, crop_irc=CROP_IRC):
    """Batches of (B, 1, 32, 48, 48) HU crops from the training series' candidates, nodules and
    non-nodules alternating (chapter 12's balanced order), `count` crops in all."""
    train, _val = split_by_series(read_candidates(luna), val_stride)
    order = epoch_order([c.is_nodule for c in train], count, balanced=True, seed=seed)
    ds = LunaDataset(train, luna.series, crop_irc)
    crops = torch.stack([ds[int(i)][0] for i in order])
    return list(crops.split(batch_size))


def calibration_slices(luna, count=16, batch_size=8, val_stride=10, seed=0, multiple=4):
    """Batches of (B, 7, R, C) HU slices with their context from the training series, as
    nodule_analysis feeds the U-Net (rows and columns padded with air to `multiple`); slices
    of one CT per batch (CTs may differ in size), `count` slices in all, spread over the CTs."""
    train_uids, _val = split_series(luna.series, val_stride)
    rng = np.random.default_rng(seed)
    uids = [train_uids[i] for i in rng.permutation(len(train_uids))]
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


# ----------------------------------------------------------------------------- measuring
def tensor_bytes(module):
    """Bytes of a module's parameters and buffers (the int8 weights of a program, as stored)."""
    return sum(t.numel() * t.element_size() for t in list(module.parameters())
               + list(module.buffers()))


def serialized_bytes(model, example_inputs):
    """Bytes of the fp32 model saved as save_int8 saves an int8 program."""
    return save_exported(model.eval(), example_inputs, io.BytesIO(), spatial_multiple(model))


def agreement(reference, outputs, kind):
    """Agreement of one precision's outputs with fp32's: the largest |P - P_fp32| and the
    fraction of 0.5 decisions that differ (per crop for 'cls', per voxel for 'unet'; for the
    U-Net also per voxel of the union of the two masks)."""
    p_ref = reference[1][:, 1] if kind == "cls" else reference
    p = outputs[1][:, 1] if kind == "cls" else outputs
    ref_yes, yes = p_ref > 0.5, p > 0.5
    out = {"max_abs_diff": float((p - p_ref).abs().max()),
           "decisions_differ": float((ref_yes != yes).float().mean()), "n": int(p.numel())}
    if kind == "unet":
        union = int((ref_yes | yes).sum())
        out["mask_voxels_differ"] = float((ref_yes != yes).sum()) / max(union, 1)
        out["mask_voxels"] = int(ref_yes.sum())
    return out


def run_batches(run, inputs, batch_size):
    """`run` over `inputs` (N, ...) in batches; the outputs concatenated."""
    outs = [run(inputs[i:i + batch_size]) for i in range(0, len(inputs), batch_size)]
    if isinstance(outs[0], torch.Tensor):
        return torch.cat(outs)
    return tuple(torch.cat(parts) for parts in zip(*outs))


# (label, precision, compiled): the rows of the benchmark, the first the reference
VARIANTS = (("fp32", "fp32", False), ("bf16", "bf16", False), ("fp32 compiled", "fp32", True),
            ("bf16 compiled", "bf16", True), ("int8", "int8", True))


def measure_precisions(model, kind, eval_inputs, calibration_batches, batch_size, repeats=5,
                       variants=VARIANTS, announce=print):
    """{label: prepare_s, bytes, weight_bytes, ms, median_ms, agreement} per (label, precision,
    compiled).

    Latency: one batch of `batch_size` eval_inputs, timed in rounds that call every variant
    once each (so a busy machine slows them alike); agreement with the first variant (fp32
    eager) over all eval_inputs; bytes of the fp32 model and the int8 program saved (with a
    2-row example input inside), and of their weights.
    """
    example = eval_inputs[:batch_size].contiguous()
    results, runs = {}, {}
    for label, precision, compiled in variants:
        start = time.perf_counter()
        size = weights = None
        if precision == "int8":
            program = quantize_int8(model, (example,), calibration_batches)
            size, weights = save_int8(program, (example,), io.BytesIO()), tensor_bytes(program)
            runs[label] = int8_runner(program, (example,), compiled)
        else:
            runs[label] = prepare_model(model, precision, (example,), compiled=compiled)
            if precision == "fp32":
                size, weights = serialized_bytes(model, (example,)), tensor_bytes(model)
        runs[label](example)                                # compiles, packs, warms up
        results[label] = {"precision": precision, "compiled": compiled, "bytes": size,
                          "weight_bytes": weights, "prepare_s": time.perf_counter() - start,
                          "ms": []}
        announce(f"  {kind} {label}: ready in {results[label]['prepare_s']:.1f} s")
    labels = list(runs)
    reference = run_batches(runs[labels[0]], eval_inputs, batch_size)
    for label in labels[1:]:
        results[label]["agreement"] = agreement(
            reference, run_batches(runs[label], eval_inputs, batch_size), kind)
    for _ in range(repeats):
        for label in labels:
            start = time.perf_counter()
            runs[label](example)
            results[label]["ms"].append(1e3 * (time.perf_counter() - start))
    for r in results.values():
        r["median_ms"] = statistics.median(r["ms"])
    return results


def format_results(results, kind, batch_size):
    """One line per variant: median ms, speed against fp32 and bf16 (eager), agreement, size."""
    lines = []
    for label, r in results.items():
        ratio = {q: results[q]["median_ms"] / r["median_ms"] for q in ("fp32", "bf16")
                 if q in results}
        a = r.get("agreement")
        agree = (f"max|dP| {a['max_abs_diff']:.4f}, {a['decisions_differ']:.3%} of "
                 f"{a['n']:,} decisions differ" if a else "(the reference)")
        if a and kind == "unet":
            agree += f" ({a['mask_voxels_differ']:.2%} of the mask union)"
        size = (f"{r['weight_bytes'] / 1e3:.0f} kB ({r['bytes'] / 1e3:.0f} kB file)"
                if r["bytes"] else "-")
        lines.append(f"{kind:4s} batch {batch_size:<3d} {label:14s} {r['median_ms']:8.1f} ms "
                     + " ".join(f"{v:5.2f}x {q}" for q, v in ratio.items())
                     + f" {size:>22s}  {agree}")
    return "\n".join(lines)


def cpu_name():
    """The CPU's model name (Linux), for the table's heading."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def real_ct_inputs(ct, seg_run, batch_size, n_crops, seed=0):
    """((I, 7, R', C') HU slices of the CT, (K, 1, 32, 48, 48) HU crops): the crops around up
    to n_crops candidates that the fp32 U-Net (seg_run) finds, as nodule_analysis groups them
    (the book's erosion along every axis), in a random order."""
    from ch13_segment.nodule_analysis import group_candidates  # it imports this module

    slices = torch.stack([pad_slices(torch.from_numpy(context_slices(ct.hu, i)), 4)
                          for i in range(ct.shape[0])])
    probs = run_batches(seg_run, slices, batch_size)[:, 0, :ct.shape[1], :ct.shape[2]]
    centers = group_candidates(probs.numpy() > 0.5, ct.hu)
    picks = np.random.default_rng(seed).permutation(len(centers))[:n_crops]
    crops = np.stack([ct.crop_irc(centers[i], CROP_IRC) for i in picks])
    return slices, torch.from_numpy(crops).unsqueeze(1), len(centers)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="cls,unet",
                   type=lambda t: [m.strip() for m in t.split(",") if m.strip()],
                   help="comma-separated from cls, unet (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (default: %(default)s)")
    p.add_argument("--cls-batch", type=int, default=32, help="default: %(default)s crops")
    p.add_argument("--unet-batch", type=int, default=8, help="default: %(default)s slices")
    p.add_argument("--eval-crops", type=int, default=256,
                   help="candidate crops of the real CT for the classifier's agreement")
    p.add_argument("--calibration-crops", type=int, default=64)
    p.add_argument("--calibration-slices", type=int, default=16)
    p.add_argument("--luna-data-dir", default=None,
                   help="data root of the LUNA16 series to calibrate on (default: --data-dir; "
                        "the synthetic sample when LUNA16 is absent)")
    p.add_argument("--synthetic", action="store_true", help="calibrate on the synthetic sample")
    p.add_argument("--calibration", choices=("luna", "ct"), default="luna",
                   help="luna (default): the training series; ct: the measured CT itself, the "
                        "classifier on candidate crops it is not scored on, the U-Net on every "
                        "6th slice (scored too): tells calibration data from quantization error")
    p.add_argument("--ct", default=REAL_CT,
                   help="the CT to measure on, under the data root (default: %(default)s, the "
                        "book's chapter 4 chest CT: 99 slices of 512 x 512)")
    add_data_dir_argument(p)
    args = p.parse_args(argv)
    if set(args.models) - {"cls", "unet"} or not args.models:
        p.error("--models: choose from cls, unet")
    return args


def main(argv=None):
    from ch13_segment.nodule_analysis import BOOK_CLS_MODEL, BOOK_SEG_MODEL, load_model  # a cycle

    args = parse_args(argv)
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"{args.repeats} interleaved rounds per figure")
    luna = locate_luna(args.luna_data_dir or args.data_dir, args.synthetic)
    ct = load_ct(data_root(args.data_dir) / args.ct)
    seg = load_model(book_file(BOOK_SEG_MODEL, args.data_dir, "luna-models"), "UNetWrapper",
                     "--seg-model")
    cls = load_model(book_file(BOOK_CLS_MODEL, args.data_dir, "luna-models"), "LunaModel",
                     "--cls-model")
    seg_fp32 = prepare_model(seg, "fp32", (torch.zeros(1, 7, 8, 8),), compiled=False)
    slices, crops, n_candidates = real_ct_inputs(ct, seg_fp32, args.unet_batch,
                                                 args.eval_crops + args.calibration_crops)
    crops, ct_crops = crops[:args.eval_crops], crops[args.eval_crops:]
    where = (f"the training series of {luna.root}" if args.calibration == "luna" else
             f"{len(ct_crops)} other candidate crops and every 6th slice of the CT")
    print(f"{args.ct}: {ct.shape} voxels, {n_candidates} candidates, {len(crops)} of them "
          f"scored; calibration on {where}")
    out = {}
    if "unet" in args.models:
        calibration = (calibration_slices(luna, args.calibration_slices)
                       if args.calibration == "luna" else list(slices[::6].split(args.unet_batch)))
        out["unet"] = measure_precisions(seg, "unet", slices, calibration, args.unet_batch,
                                         args.repeats)
        print(format_results(out["unet"], "unet", args.unet_batch), flush=True)
    if "cls" in args.models:
        calibration = (calibration_crops(luna, args.calibration_crops)
                       if args.calibration == "luna" else list(ct_crops.split(args.cls_batch)))
        out["cls"] = measure_precisions(cls, "cls", crops, calibration, args.cls_batch,
                                        args.repeats)
        print(format_results(out["cls"], "cls", args.cls_batch), flush=True)
    return out


if __name__ == "__main__":
    keep_freed_memory()                 # as nodule_analysis.py runs: see runtime.py
    run_cli(main)
